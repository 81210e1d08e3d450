"""The storage tiering plan: per media its target tier (hot, warm, cold), the plan table and its dry-run report."""
