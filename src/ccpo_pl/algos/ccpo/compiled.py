"""torch.compile for the CCPO update: inductor with three changes for small CPU graphs, or eager where it fails.

Each change makes the default update faster (`benchmarks/ccpo_update.py --without <change>`; the factors are in
docs/performance.md, "Compile changes, one at a time"):
- views recomputed in the backward by the forward/backward partitioner: saving views made it store each ReLU's
  bool mask for activations with more than one leading dim (the M-step's [E, S, hidden]), and inductor's CPU
  kernels write bool tensors much slower than float ones;
- the C++ wrapper (`cpp_wrapper`, CPU only), which calls the generated kernels instead of Python;
- `addmm(bias, x, w)` split into `mm(x, w) + bias` (CPU only): aten's CPU addmm first copies the broadcast bias
  into its output, while the split add fuses into the ReLU kernel after each hidden layer.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor


def inductor_backend(*, recompute_views: bool = True, cpp_wrapper: bool = True,
                     split_addmm: bool = True) -> Callable:
    """A torch.compile backend: inductor with the changes of the module docstring (each can be switched off, to
    measure it: `benchmarks/ccpo_update.py`); the C++ wrapper and the addmm split apply on CPU only."""
    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        from torch._functorch import config as functorch_config
        from torch._inductor.compile_fx import compile_fx

        patches = {}
        if all(t.device.type == "cpu" for t in example_inputs if isinstance(t, Tensor)):
            patches["cpp_wrapper"] = cpp_wrapper
            if split_addmm:
                patches["post_grad_custom_post_pass"] = addmm_without_bias_copy()
        with functorch_config.patch(recompute_views=recompute_views):  # the partition happens inside this call
            return compile_fx(gm, example_inputs, config_patches=patches)

    return backend


inductor_for_the_update = inductor_backend()


def compiled_or_eager(fn: Callable, backend: Callable | None = None) -> Callable:
    """`torch.compile(fn)` (default backend: `inductor_for_the_update`): one fused graph of a fixed-shape block of
    the update; falls back to eager, with a warning, where compilation is not possible here."""
    compiled = torch.compile(fn, dynamic=False, backend=backend or inductor_for_the_update)
    state = {"fn": compiled}

    def call(*args, **kwargs):
        try:
            return state["fn"](*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a missing compiler toolchain shows up as many error types
            if state["fn"] is fn:
                raise
            name = getattr(fn, "__name__", repr(fn))
            warnings.warn(f"torch.compile failed ({type(err).__name__}); running {name} eagerly", stacklevel=2)
            state["fn"] = fn
            return fn(*args, **kwargs)

    return call


@functools.cache
def addmm_without_bias_copy():
    """An inductor post-grad pass (one instance, so that its cache key holds): every `aten.addmm(bias, x, w)`
    with beta = alpha = 1 becomes `aten.mm(x, w) + bias`, the same values with the bias added in a fused kernel."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class AddmmWithoutBiasCopy(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            aten = torch.ops.aten
            for node in list(graph.nodes):
                if node.target is not aten.addmm.default or node.kwargs or len(node.args) != 3:
                    continue
                bias, x, w = node.args
                with graph.inserting_before(node):
                    product = graph.call_function(aten.mm.default, (x, w))
                    total = graph.call_function(aten.add.Tensor, (product, bias))
                for new in (product, total):  # same shape, dtype and layout as the addmm's output
                    new.meta.update(node.meta)
                node.replace_all_uses_with(total)
                graph.erase_node(node)

        def uuid(self) -> bytes:  # inductor's cache key: changes with this file
            return get_hash_for_files((__file__,))

    return AddmmWithoutBiasCopy()
