# Training settings read by joindet.engine.lazy (the LazyConfig route of train_net.py).
train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights loaded before training (or evaluated with --eval-only)
    max_iter=90000,  # configs set it from their epochs (see common/schedule.py)
    amp=dict(enabled=False),  # automatic mixed precision (CUDA only)
    ddp=dict(  # options of DistributedDataParallel (Detectron2's create_ddp_model)
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    checkpointer=dict(period=5000, max_to_keep=100),  # PeriodicCheckpointer (model_final at the end)
    eval_period=0,  # evaluate every this many iterations; 0 = only once, at the end
    log_period=20,  # iterations between metric writes
    device="cuda",
)
