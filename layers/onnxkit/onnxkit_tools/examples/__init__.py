"""Example models built from packaged data and weights (never fetched from a hub)."""
