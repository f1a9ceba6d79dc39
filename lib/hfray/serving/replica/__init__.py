"""What runs in Ray Serve replicas: the FastAPI ingress (:mod:`.ingress`, request checks in :mod:`.requests`), the
classifier hosts with batching and CUDA graphs (:mod:`.models`, :mod:`.graphs`), and the fine-tuning tasks'
pipelines (:mod:`.task_models`), and language models: generation, OpenAI chat/completions, fill-mask and adapters
on a shared base (:mod:`.lm_routes` in the ingress, :mod:`.lm_requests`, :mod:`.generation`)."""
