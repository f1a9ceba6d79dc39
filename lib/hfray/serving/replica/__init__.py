"""What runs in Ray Serve replicas: the FastAPI ingress (:mod:`.ingress`, request checks in :mod:`.requests`), the
classifier hosts with batching and CUDA graphs (:mod:`.models`, :mod:`.graphs`), and the fine-tuning tasks'
pipelines (:mod:`.task_models`)."""
