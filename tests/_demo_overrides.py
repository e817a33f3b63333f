"""The shrunken offline demo as Hydra overrides (tiny task, tiny pair, short stages): the long
override list the end-to-end, sweep and method tests run train.py with."""

SHRUNKEN_DEMO = [
    "demo.task.train_size=120", "demo.task.validation_size=20", "demo.task.test_size=40",
    "demo.expert.train_steps=6", "demo.expert.hidden_size=32", "demo.expert.num_layers=1", "demo.expert.intermediate_size=64",
    "demo.amateur.train_steps=3", "demo.amateur.hidden_size=16", "demo.amateur.num_layers=1", "demo.amateur.intermediate_size=32",
    "demo.expert.batch_size=16", "demo.amateur.batch_size=16", "demo.eval_problems=0",
    "dataset.max_problems=24", "sampling.batch_size=12", "sampling.max_new_tokens=24",
    "trainer.max_steps=2", "distill.steps_per_batch=16", "eval.max_problems=40", "eval.max_new_tokens=24", "eval.batch_size=20",
]
