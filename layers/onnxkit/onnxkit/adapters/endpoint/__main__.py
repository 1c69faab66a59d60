"""``python -m onnxkit.adapters.endpoint``: the endpoint server, as the container's ``serve``."""

from onnxkit.adapters.endpoint.server import exit_after

exit_after()
