"""The experiments app: the seed's CIFAR recipes run on top of the ``sigreg_hf`` core, like any user would.

Modules (one job each): ``recipes`` (the 27 table rows, package data), ``train_args`` (command-line argument
groups), ``data`` (loading, decoding cache, transforms, MixUp/CutMix, the digits), ``optim`` (optimisers and
schedules), ``metrics`` (top-k accuracy), ``image_trainer`` (the trainer with a training top-1),
``record`` (:class:`~sigreg_hf.experiments.record.RunRecord`, the only reader/writer of ``results.json``),
``run_outputs`` / ``plots`` / ``collect`` / ``card`` (functions of records), ``push`` (Hub upload with an
allow-list), ``evaluate`` (a checkpoint through ``Trainer.evaluate``), ``quickstart``, and the command lines
``cli_train`` / ``cli_reproduce`` / ``cli`` (the ``sigreg-hf`` console script). The core never imports this
package.
"""
