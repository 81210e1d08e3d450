"""The ranker and two-tower settings at tiny sizes, for the tests that run the training DAGs and jobs on the tiny
world: the point there is the pipeline (MLflow runs, the registry, what is published), not model quality."""

RANKER = {
    "embedding_dim": 8,
    "id_buckets": 4096,
    "multi_buckets": 256,
    "dense_hidden": [16],
    "num_experts": 2,
    "expert_hidden": [16],
    "tower_hidden": [8],
    "epochs": 1,
    "batch_size": 256,
    "shuffle_buffer_rows": 4096,
    "lgbm_rounds": 20,
    "train_days": 7,
    "baseline_max_rows": 20_000,
    "logreg_hash_buckets": 4096,
}

TWO_TOWER = {
    "id_buckets": 4096,
    "embedding_dim": 16,
    "output_dim": 32,
    "hidden": [32],
    "batch_size": 256,
    "train_days": 7,
    "eval_ks": [10, 50, 100],
    "eval_max_users": 2000,
    "index_queries": 200,
    "retrieve_k": 100,
    "score_k": 40,
    "explore_size": 20,
}
