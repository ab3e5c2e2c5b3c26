"""Studio, the server-rendered admin UI. For now: a placeholder page at ``/studio``."""

from hogsend.studio.mount import mount_studio as mount_studio

__all__ = ["mount_studio"]
