"""Studio's pages, one module per part of the navigation."""
