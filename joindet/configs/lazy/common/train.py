# Training settings read by joindet.engine.lazy (the LazyConfig route of train_net.py).
train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights loaded before training (or evaluated with --eval-only)
    max_iter=90000,  # configs set it from their epochs (see common/schedule.py), or set epochs
    # > 0: max_iter = epochs x ceil(training images / dataloader.train.total_batch_size), computed after the
    # overrides from the training set's size (joindet.engine.lazy.resolve_lazy_epochs; SOLVER.EPOCHS of yacs)
    epochs=0.0,
    # > 0 (pretraining, with prior_hook.period 0): refresh the priors every this many epochs (JOINDET.UPDATE_PERIOD)
    prior_period_epochs=0.0,
    seed=-1,  # seed of the random generators (Detectron2's default_setup; < 0 = a random seed), as SEED of yacs
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
