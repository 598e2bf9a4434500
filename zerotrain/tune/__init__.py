"""`zerotrain tune`: the fastest configuration that fits, found by planning first and measuring second.

1. enumerate   ZeRO stage (0-3) × offload (none, optimizer to CPU, optimizer and parameters to CPU) × activation
               checkpointing × micro-batch, each with the accumulation that keeps the global batch; after pruning,
               ZeRO-3 with the planner's partial offload where the GPU alone is too small (add_partial_offload);
2. prune       with the memory planner: what needs more GPU memory or host RAM than there is, with headroom, is
               dropped with the reason; the rest is ordered by a predicted step time (`predict_terms`, below),
               calibrated on the measurements as they arrive (`Calibration`);
3. measure     the most promising with bench's machinery (a real `zerotrain train` run each, warm-up steps left out
               of the median), stopping a run once it is clearly slower than the best so far, and stopping the
               search once the budget is spent or the rest are predicted clearly slower than the best measured;
4. write       the winner as a run config (and with --for a ds_config, an HF Trainer "auto" config or an Accelerate
               config), tune.md and tune.json with every candidate, and tune.png.

docs/tune.md describes the step-time model and the GPU benchmark. The measuring happens in `zerotrain train`
subprocesses; this process plans only.

  grid.py       the candidates (Candidate, enumerate_candidates, add_partial_offload) and the planner's verdict on
                each (prune, what_would_fit)
  stepmodel.py  the predicted step time: four terms from the shape and hardware constants (predict_terms), Calibration
  search.py     one measured run, stopped early when clearly slower (measure); the search (search); --resume's state
  report.py     tune.md, tune.json, tune.png
  run.py        the verb: TuneArgs, setup (every check before anything is written), tune, write_winner
"""

from zerotrain.tune.grid import MICRO_BATCHES, OFFLOADS, Candidate, Limits, enumerate_candidates, prune, split_batch
from zerotrain.tune.report import prediction_error, write_reports
from zerotrain.tune.run import TARGETS, TUNED_KEYS, TuneArgs, setup, tune, write_winner
from zerotrain.tune.search import Measure, Search, measure, search
from zerotrain.tune.stepmodel import TERMS, Calibration, Hardware, default_hardware, predict_terms

__all__ = [
    "MICRO_BATCHES",
    "OFFLOADS",
    "TARGETS",
    "TERMS",
    "TUNED_KEYS",
    "Calibration",
    "Candidate",
    "Hardware",
    "Limits",
    "Measure",
    "Search",
    "TuneArgs",
    "default_hardware",
    "enumerate_candidates",
    "measure",
    "predict_terms",
    "prediction_error",
    "prune",
    "search",
    "setup",
    "split_batch",
    "tune",
    "write_reports",
    "write_winner",
]
