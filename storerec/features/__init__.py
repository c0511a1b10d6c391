"""Data layer: table schemas, import and validation, the built-in storefront simulator, profiles."""
