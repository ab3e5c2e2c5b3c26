"""Admin API (``/v1/admin/*``): every route needs an admin scope; mutations are audited."""
