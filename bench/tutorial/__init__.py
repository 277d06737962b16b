"""The tutorial: the FastAPI service this one replaces, exactly as the tutorial designs it."""
