"""fine_tune / full_tune: the epoch loop (epoch_loop), batches on the compute device (batches,
augment), freezing and parameter groups (freezing), checkpoints to resume (checkpoint), and
several GPUs (distributed).
"""
