"""Running the function and its dependencies on this machine: no AWS, no Docker."""
