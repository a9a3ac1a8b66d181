"""The papers' reported figures, shipped as package data (see SOURCES.md); loaded with
``importlib.resources.files("zeroseg.dashboards.reference")``."""
