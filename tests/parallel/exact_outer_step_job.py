"""One TAR outer step with the exact second-order meta-gradient on a data 2 x fsdp 2 x adversary 2 mesh, run as a
job of `test_multiprocess.py` (in one process with 8 devices, or in each of two processes with 4): writes the step's
metrics and new weights (gathered to host) to ``OUT.npz`` from process 0. The weights are loaded straight into
their FSDP shards across the processes (`from_pretrained(..., sharding=...)`: each process fills its own shards, one
tensor at a time) and checked against the same weights loaded whole and then placed. Each process writes how many
texts it tokenised to ``OUT.tokenised.<process index>.json`` (the batch's rows are tokenised where they are placed),
and how many forget texts it read for the held-out split (its share: the content keys are gathered).
It also computes DPO's reference log-probs of 16 preference pairs on the mesh (`preference_reference`, batches of
8 split over data x fsdp), each process tokenising the pairs of its own shards.

    python exact_outer_step_job.py OUT [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import dataclasses
import json
import sys

import numpy as np

from jaxtar.parallel import initialize_distributed, is_main_process, make_mesh, to_host

if len(sys.argv) == 5:
    initialize_distributed(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), mesh=(2, 2, 2), timeout_s=300)

import jax  # noqa: E402 - after the distributed runtime

from jaxtar.config import load_config  # noqa: E402
from jaxtar.defenses import _inputs, build_tar_phases, load_model  # noqa: E402
from jaxtar.defenses._steps import place, shard_batches, step_key  # noqa: E402
from jaxtar.defenses.tar_data import preference_reference  # noqa: E402
from jaxtar.models import from_pretrained  # noqa: E402
from jaxtar.parallel import fsdp_spec  # noqa: E402
from jaxtar.toy import toy_base_model_path  # noqa: E402

OVERRIDES = {
    "model.path": "toy", "tar.estimator": "exact", "tar.inner_steps": 2, "tar.tamper_every": 1,
    "tar.adversaries_per_step": 2, "tar.adversary_batch_size": 8, "tar.tamper_batch_size": 8,
    "tar.retain_batch_size": 8, "tar.warmup_steps": 0, "tar.eps": 1e-4, "run.mesh_data": 2, "run.mesh_fsdp": 2,
    "run.mesh_adversary": 2,
}  # fmt: skip


class CountingTokenizer:
    """The tokenizer, counting the texts it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.texts += len(texts)
        return self.tokenizer(texts, **kwargs)

    def __len__(self):
        return len(self.tokenizer)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


opened = {}  # every role's examples, by source, to count the examples each process reads
_role_examples = _inputs.role_examples


def recording(source, data, kind="text"):
    examples = _role_examples(source, data, kind)
    opened.setdefault(source, []).append(examples)
    return examples


_inputs.role_examples = recording
config = load_config("toy", OVERRIDES)
mesh = make_mesh(2, 2, 2)
model, params, tokenizer = load_model(config.model)
tokenizer = CountingTokenizer(tokenizer)
phases, data = build_tar_phases(config, model, params, tokenizer, mesh)
at_start = tokenizer.texts
forget_read = sum(e.reads for e in opened["toy:forget"])  # the tamper role: its held-out split's keys
phase = phases[0]
placed = place(params, mesh)
fsdp = lambda path, shape: jax.sharding.NamedSharding(mesh, fsdp_spec(shape, 2))  # noqa: E731 - param_shardings' rule
_, params = from_pretrained(toy_base_model_path(), sharding=fsdp)
same = jax.tree.map(lambda a, b: a.sharding == b.sharding and bool(jax.numpy.array_equal(a, b)), params, placed)
assert all(jax.tree.leaves(same)), "the streamed shards differ from the placed weights"
batches = shard_batches(data.batches(0, lazy=True), mesh, phase.batch_axes)
counts = {"at_start": at_start, "batch": tokenizer.texts - at_start, "forget_read": forget_read}
pairs = _inputs.role_table(tokenizer, "toy:preferences", dataclasses.replace(config.data, limit=16), "preference")
before = tokenizer.texts
reference = preference_reference(model, placed, mesh, batch_size=8)(pairs)
counts["preference_pairs"] = tokenizer.texts - before
with open(f"{sys.argv[1]}.tokenised.{jax.process_index()}.json", "w") as f:
    json.dump(counts, f)
new, _, metrics = phase.step_fn(params, place(phase.init_opt_state(params), mesh), batches, step_key(0, 0), params)
host = to_host({"params": new, "metrics": metrics, "reference": reference})
if is_main_process():
    flat = {"/".join(str(k) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(host)}
    np.savez(sys.argv[1], **flat)
