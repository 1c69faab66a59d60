"""``onnxkit bench``: latency and throughput per vCPU share, and what serving costs on Lambda
(per MemorySize) and on SageMaker (real-time and asynchronous)."""

from onnxkit_tools.bench.cost import CostEstimate, Prices, estimate_costs, load_prices
from onnxkit_tools.bench.errors import BenchError
from onnxkit_tools.bench.measure import BenchOptions, Measurement, measure_model

__all__ = [
    "BenchError",
    "BenchOptions",
    "CostEstimate",
    "Measurement",
    "Prices",
    "estimate_costs",
    "load_prices",
    "measure_model",
]
