"""Lambda entry point: build the handler from the environment once, at init."""

import os

from onnxkit.adapters.lambda_api import build_handler
from onnxkit.settings import Settings

lambda_handler = build_handler(Settings.from_env(os.environ))
