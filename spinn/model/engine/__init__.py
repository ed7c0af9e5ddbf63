"""The fast engine: the stock SPINN (`spinn.model.cells`) computed without per-step autograd.

It computes what `spinn.model.reference` defines, for the stock cells only (`SPINN` checks that and
otherwise runs the reference):

* `given.encode_given` -- with given transitions every node id is known before the forward pass starts
  (`spinn.schedule.build_schedule`), so the whole loop, Tracker steps and REDUCEs, is one
  `torch.autograd.Function`;
* `forward` -- the loop: the node states live in two stores ``h_store`` and ``c_store`` (R, D) written
  once per row, in place, outside autograd (rows are never overwritten, so the backward reads every
  child's c back); the Tracker runs only on the sentences not yet finished (longest first, so those
  are a prefix of the batch) and its input from the buffer top (always a leaf) is computed for all
  leaves in one matmul before the loop; without a Tracker the nodes of one tree level are composed
  in one call. The candidate gate's tanh(z) is 2 sigmoid(2 z) - 1, the factor 2 folded into its
  weights, so one sigmoid covers all gates (`spinn.model.cells.Kernels`);
* `backward` -- the hand-written backward: the steps in reverse with gradient stores of the same
  layout, and each weight's gradient at the end in one matmul over all steps instead of one per step;
* `parse` -- a full SPINN following its own predictions without a gradient, step by step with one
  host read of the scores per step;
* `memory` -- what the loops keep between calls instead of allocating it afresh.

Per step that is a handful of kernels and no autograd bookkeeping; with given transitions the Python
loop does not touch the host beyond reading the precomputed offsets, so it is free of device
synchronisation.
"""

from spinn.model.engine.given import encode_given, needs_grad
from spinn.model.engine.parse import StockWeights, follow_predictions

__all__ = ["StockWeights", "encode_given", "follow_predictions", "needs_grad"]
