"""Studio, the server-rendered admin UI (Jinja2 + htmx), mounted at ``/studio``."""

from hogsend.studio.mount import mount_studio as mount_studio

__all__ = ["mount_studio"]
