"""Pre-training from scratch (``task: masked-lm`` / ``causal-lm``): BERT-style and GPT-2/Llama-style LMs.

Same lifecycle as fine-tuning; what differs: the model comes from ``model.architecture`` (randomly initialised);
``lm.pipeline: ray-data`` tokenizes and packs on Ray Data CPU tasks and streams a disjoint shard to each worker
(:mod:`hfray.data.stream`), ``datasets`` packs in memory on every worker; evaluation is held-out loss and
perplexity; the job's ``tokenizer`` section, if any, is trained first when ``model.tokenizer`` does not exist yet.
Artifacts load with ``pipeline("fill-mask")`` / ``pipeline("text-generation")``. Sweepable (metric eval_loss, or
eval_perplexity).
"""

from hfray.train.recipes.base import Recipe, WorkerFunction
from hfray.train.recipes.language_model import driver

WORKER = "hfray.train.recipes.language_model.worker"  # imported where its functions run (WorkerFunction)

RECIPE = Recipe(
    tasks=("masked-lm", "causal-lm"),
    preflight=driver.preflight,
    describe=driver.describe,
    loop_config=driver.loop_config,
    train_loop_per_worker=WorkerFunction(WORKER, "train_loop_per_worker"),
    artifact_fields=WorkerFunction(WORKER, "artifact_fields"),
    ray_datasets=driver.ray_datasets,
    connected_checks=driver.check_data_cpus,
    sweepable=True,
)
