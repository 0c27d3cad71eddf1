"""SIGRegMixin on Trainer, Seq2SeqTrainer and TRL's SFTTrainer: the parent's loss and semantics, plus SIGReg.

Real small models built from configs, offline. "Bitwise" means ``torch.equal`` on every parameter after training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import datasets
import pytest
import torch
from sigreg_test_models import FAMILIES, VOCAB, DictDataset, image_data, losses, training_args
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from sigreg_hf import SIGRegArguments, SIGRegMixin, SIGRegulariser
from sigreg_hf.losses import sigreg_strong
from sigreg_hf.soft_targets import soft_target_loss
from sigreg_hf.trainer import SIGRegTrainer

trl = pytest.importorskip("trl")


@dataclass
class SFTSIGRegConfig(SIGRegArguments, trl.SFTConfig):
    pass


class SFTSIGRegTrainer(SIGRegMixin, trl.SFTTrainer):
    pass


@dataclass
class Seq2SeqSIGRegConfig(SIGRegArguments, Seq2SeqTrainingArguments):
    pass


class Seq2SeqSIGRegTrainer(SIGRegMixin, Seq2SeqTrainer):
    pass


def _plain(args, cls=TrainingArguments):
    """The same arguments without the sigreg_* fields, as ``cls``."""
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in args.to_dict().items() if k in fields and fields[k].init})


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def padded_lm_data(n: int, seed: int = 0) -> DictDataset:
    """Causal-LM rows of length 8 with 2-8 real tokens, right padding (attention_mask 0, labels -100)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(1, VOCAB, (n, 1), generator=g)
    ids = (start + torch.arange(8)) % (VOCAB - 1) + 1
    lengths = torch.randint(2, 9, (n,), generator=g)
    mask = (torch.arange(8) < lengths[:, None]).long()
    return DictDataset(input_ids=ids * mask, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


class GradCatcher(TrainerCallback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


# ------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------
def test_sigreg_arguments_combine_with_any_training_arguments_and_parse(tmp_path):
    parser = HfArgumentParser(SFTSIGRegConfig)
    (args,) = parser.parse_args_into_dataclasses([
        "--output_dir", str(tmp_path), "--use_cpu", "true", "--sigreg_mode", "strong", "--sigreg_alpha", "0.01",
        "--loss_type", "dft",
        "--max_length", "64", "--sigreg_strong_normalization", "per_sample", "--sigreg_in_eval", "false",
        "--sigreg_layers", r"model\.layers\.\d+",
    ])  # fmt: skip
    assert isinstance(args, trl.SFTConfig) and isinstance(args, SIGRegArguments)
    assert (args.sigreg_mode, args.sigreg_alpha, args.loss_type, args.max_length) == ("strong", 0.01, "dft", 64)
    assert (args.sigreg_strong_normalization, args.sigreg_in_eval) == ("per_sample", False)
    assert args.sigreg_layers == [r"model\.layers\.\d+"]
    (seq,) = HfArgumentParser(Seq2SeqSIGRegConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--predict_with_generate", "true", "--sigreg_mode", "weak"]
    )
    assert seq.predict_with_generate and seq.sigreg_mode == "weak" and seq.sigreg_layers == ["auto"]
    (alone,) = HfArgumentParser(SIGRegArguments).parse_args_into_dataclasses(["--sigreg_layers", "a", "b"])
    assert alone.sigreg_layers == ["a", "b"] and alone.sigreg_mode == "none"
    # validated once, in __post_init__, whatever the combination
    for cls, extra in ((SFTSIGRegConfig, {"output_dir": str(tmp_path), "use_cpu": True}), (SIGRegArguments, {})):
        with pytest.raises(ValueError, match="sigreg_strong_normalization must be one of"):
            cls(sigreg_strong_normalization="per_batch", **extra)
        with pytest.raises(ValueError, match="sigreg_in_eval must be True or False"):
            cls(sigreg_in_eval="no", **extra)
    with pytest.raises(ValueError, match="sigreg_mode must be one of"):
        SFTSIGRegConfig(output_dir=str(tmp_path), use_cpu=True, sigreg_mode="medium")


# ------------------------------------------------------------------------------------------------
# sigreg_mode="none" == the parent, bit for bit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mode_none_is_bitwise_the_parent_for_a_causal_lm_with_padding_and_accumulation_4(family, tmp_path):
    runs = []
    for cls in (Trainer, SIGRegTrainer):
        model = FAMILIES[family].model()
        start = _params(model)
        args = training_args(
            tmp_path / cls.__name__, sigreg_mode="none", max_steps=3, per_device_train_batch_size=2,
            gradient_accumulation_steps=4, learning_rate=1e-2,
        )  # fmt: skip
        trainer = cls(model=model, args=_plain(args) if cls is Trainer else args, train_dataset=padded_lm_data(24))
        trainer.train()
        runs.append((losses(trainer.state.log_history), _params(model)))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) == 3
    _assert_bitwise(runs[0][1], runs[1][1])
    assert not all(torch.equal(a, b) for a, b in zip(start, runs[0][1], strict=True))


@pytest.mark.parametrize("with_loss_func", [False, True])
def test_mode_none_is_bitwise_the_parent_for_a_vit_with_accumulation(with_loss_func, tmp_path):
    """Also with a ``compute_loss_func`` under accumulation, whose loss is not divided twice: the accumulated
    gradient equals the full batch's (the old trainer's was 4x too small)."""
    extra = {"compute_loss_func": soft_target_loss} if with_loss_func else {}
    data = image_data(64, soft=with_loss_func)
    runs = []
    for cls, batch, accumulation in ((Trainer, 8, 4), (SIGRegTrainer, 8, 4), (SIGRegTrainer, 32, 1)):
        model = FAMILIES["vit"].model()
        args = training_args(
            tmp_path / f"{cls.__name__}{batch}", sigreg_mode="none", max_steps=2, optim="sgd", learning_rate=0.1,
            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        )  # fmt: skip
        catcher = GradCatcher()
        trainer = cls(
            model=model, args=_plain(args) if cls is Trainer else args, train_dataset=data, callbacks=[catcher],
            **extra,
        )  # fmt: skip
        trainer.train()
        runs.append((losses(trainer.state.log_history), _params(model), catcher.grads[0]))
    (plain_loss, plain_params, _), (ours_loss, ours_params, acc_grads), (big_loss, _, big_grads) = runs
    assert ours_loss == plain_loss
    _assert_bitwise(plain_params, ours_params)
    assert ours_loss[0] == pytest.approx(big_loss[0], rel=1e-5)
    for name, grad in big_grads.items():
        torch.testing.assert_close(acc_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------
# the regulariser's weight under accumulation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "mlp", "resnet"])
def test_regulariser_keeps_its_weight_under_accumulation(family, tmp_path):
    """Each optimiser step's loss is (1-a) * task + a * reg with task and reg the means over the 4 micro-batches:
    the parent's loss scaled by num_items_in_batch (llama: the model, mlp: compute_loss_func) or divided by the
    Trainer (resnet with accepts_loss_kwargs=False), and the regulariser added so that it weighs a either way."""
    fam = FAMILIES[family]
    model = fam.model()
    if family == "resnet":
        model.accepts_loss_kwargs = False
    data = padded_lm_data(32) if family == "llama" else fam.data(32)
    args = training_args(
        tmp_path, max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=4, sigreg_alpha=0.3
    )
    trainer = SIGRegTrainer(model=model, args=args, train_dataset=data, **fam.trainer_kwargs)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "sigreg_loss" in e]
    assert len(logs) == 2
    for e in logs:
        assert e["loss"] == pytest.approx(0.7 * e["task_loss"] + 0.3 * e["sigreg_loss"], rel=1e-5)
    # and the task part is the parent's: with alpha 0 the logged loss is the plain Trainer's
    plain = Trainer(model=fam.model(), args=_plain(args), train_dataset=data, **fam.trainer_kwargs)
    if family == "resnet":
        plain.model.accepts_loss_kwargs = False
        plain.model_accepts_loss_kwargs = False
    plain.train()
    assert losses(plain.state.log_history)[0] == pytest.approx(logs[0]["task_loss"], rel=1e-5)


def test_strong_normalisation_per_sample_and_batch_size_warning(tmp_path, caplog):
    x = torch.randn(96, 16, generator=torch.Generator().manual_seed(0))
    seed = sigreg_strong(x, generator=torch.Generator().manual_seed(1))
    per_sample = sigreg_strong(x, generator=torch.Generator().manual_seed(1), normalization="per_sample")
    torch.testing.assert_close(per_sample, seed / 96)
    fam = FAMILIES["vit"]
    args = training_args(tmp_path, sigreg_mode="strong", sigreg_strong_normalization="per_sample", max_steps=1)
    assert SIGRegTrainer(model=fam.model(), args=args).regulariser.strong_normalization == "per_sample"
    args = training_args(tmp_path, sigreg_mode="strong", max_steps=2, gradient_accumulation_steps=2,
                         per_device_train_batch_size=4, per_device_eval_batch_size=8)  # fmt: skip
    trainer = SIGRegTrainer(model=fam.model(), args=args, train_dataset=fam.data(16), eval_dataset=fam.data(8))
    with caplog.at_level(logging.WARNING, logger="sigreg_hf.trainer"):
        trainer.train()
        trainer.evaluate()
        trainer.evaluate()
    warnings = [r.getMessage() for r in caplog.records if r.name == "sigreg_hf.trainer"]
    assert len(warnings) == 2, warnings
    assert "gradient_accumulation_steps=2" in warnings[0] and "per_device_eval_batch_size=8" in warnings[1]


# ------------------------------------------------------------------------------------------------
# evaluation, model_init, a user-built regulariser, the model card
# ------------------------------------------------------------------------------------------------
def test_eval_loss_is_the_task_loss_and_the_regulariser_can_be_off_in_evaluation(tmp_path):
    fam = FAMILIES["bert"]
    model = fam.model()
    eval_data = fam.data(24, seed=5)
    args = training_args(tmp_path, per_device_eval_batch_size=8, sigreg_alpha=0.5)
    plain = Trainer(model=model, args=_plain(args)).evaluate(eval_data)
    on = SIGRegTrainer(model=model, args=args).evaluate(eval_data)
    off = SIGRegTrainer(
        model=model, args=training_args(tmp_path, per_device_eval_batch_size=8, sigreg_in_eval=False)
    ).evaluate(eval_data)
    assert on["eval_loss"] == plain["eval_loss"] == off["eval_loss"]
    assert math.isfinite(on["eval_sigreg_loss"]) and on["eval_sigreg_loss"] > 0
    assert not any("sigreg" in key for key in off)


def test_model_init_hooks_follow_the_model_that_is_trained(tmp_path):
    fam = FAMILIES["vit"]
    trainer = SIGRegTrainer(
        model_init=lambda: fam.model(), args=training_args(tmp_path, max_steps=3), train_dataset=fam.data(16)
    )
    first = trainer.model
    trainer.train()
    assert trainer.model is not first  # train() called model_init again
    assert trainer.regulariser.model is trainer.model
    assert len(losses(trainer.state.log_history, "sigreg_loss")) == 3
    assert sum(len(m._forward_hooks) for m in trainer.model.modules()) == 0


def test_a_user_built_regulariser_is_used(tmp_path):
    fam = FAMILIES["vit"]
    model = fam.model()
    reg = SIGRegulariser(model, mode="weak", layers=[r"vit\.layers\.1"], sketch_dim=8, check_finite=False)
    trainer = SIGRegTrainer(
        model=model, args=training_args(tmp_path, max_steps=2, sigreg_log_per_layer=True),
        train_dataset=fam.data(16), regulariser=reg,
    )  # fmt: skip
    assert trainer.regulariser is reg
    trainer.train()
    logged = [e for e in trainer.state.log_history if "sigreg_loss" in e]
    assert len(logged) == 2 and all(set(k for k in e if k.startswith("sigreg_loss/")) == {"sigreg_loss/vit.layers.1"}
                                    for e in logged)  # fmt: skip
    with pytest.raises(ValueError, match="mode='strong' but args.sigreg_mode is 'weak'"):
        SIGRegTrainer(model=model, args=training_args(tmp_path), regulariser=SIGRegulariser(model, mode="strong"))


@pytest.mark.parametrize(("family", "modality"), [("bert", "text"), ("vit", "images")])
def test_model_card_has_a_sigreg_section_tag_and_model_index(family, modality, tmp_path):
    from huggingface_hub import ModelCard

    assert SIGRegTrainer.push_to_hub is Trainer.push_to_hub  # the Trainer's own push, which calls the card
    fam = FAMILIES[family]
    trainer = SIGRegTrainer(
        model=fam.model(), args=training_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2),
        train_dataset=fam.data(16), eval_dataset=fam.data(8, seed=2),
    )  # fmt: skip
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = ModelCard.load(tmp_path / "README.md")
    assert "sigreg" in card.data.tags
    assert "## SIGReg" in card.text and f"Trained on {modality} with SIGReg" in card.text
    assert f"Trained on {'images' if modality == 'text' else 'text'}" not in card.text
    results = card.data.eval_results
    assert results and {r.metric_type for r in results} >= {"loss", "sigreg_loss"}
    assert next(r for r in results if r.metric_type == "loss").metric_value == pytest.approx(
        [e for e in trainer.state.log_history if "eval_loss" in e][-1]["eval_loss"]
    )


# ------------------------------------------------------------------------------------------------
# Seq2SeqTrainer: a tiny T5, the encoder tapped
# ------------------------------------------------------------------------------------------------
def _t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(
        T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, dropout_rate=0.0,
                 decoder_start_token_id=0, pad_token_id=0)  # fmt: skip
    )


def test_seq2seq_trainer_with_the_mixin(tmp_path):
    data = padded_lm_data(16)
    data = DictDataset(
        input_ids=data.columns["input_ids"], attention_mask=data.columns["attention_mask"],
        labels=data.columns["labels"].flip(1),
    )  # fmt: skip
    common = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=3, logging_steps=1,
                  per_device_train_batch_size=4, gradient_accumulation_steps=2, save_strategy="no",
                  disable_tqdm=True, optim="adamw_torch", learning_rate=1e-2)  # fmt: skip
    runs = []
    for cls, args in (
        (Seq2SeqTrainer, Seq2SeqTrainingArguments(**common)),
        (Seq2SeqSIGRegTrainer, Seq2SeqSIGRegConfig(sigreg_mode="none", **common)),
    ):
        model = _t5()
        trainer = cls(model=model, args=args, train_dataset=data)
        trainer.train()
        runs.append((losses(trainer.state.log_history), _params(model)))
    assert runs[0][0] == runs[1][0]
    _assert_bitwise(runs[0][1], runs[1][1])
    args = Seq2SeqSIGRegConfig(sigreg_mode="weak", sigreg_alpha=0.2, sigreg_layers=[r"encoder\.block\.\d+"], **common)
    trainer = Seq2SeqSIGRegTrainer(model=_t5(), args=args, train_dataset=data)
    assert trainer.regulariser.layer_names == ["encoder.block.0", "encoder.block.1"]
    trainer.train()
    logs = [e for e in trainer.state.log_history if "sigreg_loss" in e]
    assert len(logs) == 3 and all(e["sigreg_loss"] > 0 for e in logs)
    for e in logs:
        assert e["loss"] == pytest.approx(0.8 * e["task_loss"] + 0.2 * e["sigreg_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------------
# TRL's SFTTrainer: a tiny Llama, padding, accumulation 2
# ------------------------------------------------------------------------------------------------
def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2, **{f"w{i}": i + 3 for i in range(VOCAB - 3)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def _sft_data(n: int = 24) -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    starts, lengths = torch.randint(0, VOCAB - 3, (n,), generator=g), torch.randint(2, 9, (n,), generator=g)
    texts = [
        " ".join(f"w{(int(s) + j) % (VOCAB - 3)}" for j in range(int(k))) for s, k in zip(starts, lengths, strict=True)
    ]
    return datasets.Dataset.from_dict({"text": texts})


def _llama():
    return FAMILIES["llama"].model()


SFT_COMMON = dict(report_to="none", use_cpu=True, max_steps=3, logging_steps=1, per_device_train_batch_size=4,
                  gradient_accumulation_steps=2, save_strategy="no", disable_tqdm=True, optim="adamw_torch",
                  learning_rate=1e-2, weight_decay=0.0, seed=0, dataset_num_proc=None)  # fmt: skip
SFT_METRICS = ("loss", "entropy", "mean_token_accuracy", "num_tokens")


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_sft_trainer_mode_none_keeps_sfts_loss_and_metrics(loss_type, tmp_path):
    runs = []
    for trainer_cls, config_cls in ((trl.SFTTrainer, trl.SFTConfig), (SFTSIGRegTrainer, SFTSIGRegConfig)):
        model = _llama()
        args = config_cls(output_dir=str(tmp_path / config_cls.__name__), loss_type=loss_type, **SFT_COMMON)
        trainer = trainer_cls(model=model, args=args, train_dataset=_sft_data(), processing_class=_tokenizer())
        trainer.train()
        runs.append(({k: losses(trainer.state.log_history, k) for k in SFT_METRICS}, _params(model)))
    (plain, plain_params), (ours, ours_params) = runs
    assert all(len(plain[k]) == 3 for k in SFT_METRICS)
    assert ours == plain
    _assert_bitwise(plain_params, ours_params)


@pytest.mark.parametrize(("mode", "loss_type"), [("weak", "nll"), ("strong", "dft")])
def test_sft_trainer_with_sigreg_logs_the_regulariser_beside_sfts_metrics(mode, loss_type, tmp_path):
    args = SFTSIGRegConfig(output_dir=str(tmp_path), loss_type=loss_type, sigreg_mode=mode, sigreg_alpha=0.2,
                           eval_strategy="steps", eval_steps=3, **SFT_COMMON)  # fmt: skip
    trainer = SFTSIGRegTrainer(model=_llama(), args=args, train_dataset=_sft_data(), eval_dataset=_sft_data(8),
                               processing_class=_tokenizer())  # fmt: skip
    assert trainer.regulariser.layer_names == ["model.layers.0", "model.layers.1"]
    trainer.train()
    (evaluation,) = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert {"eval_sigreg_loss", "eval_mean_token_accuracy", "eval_entropy"} <= set(evaluation)
    assert evaluation["eval_loss"] == pytest.approx(evaluation["eval_task_loss"], rel=1e-6)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3
    for e in logs:
        assert {"entropy", "mean_token_accuracy", "num_tokens", "task_loss", "sigreg_loss"} <= set(e)
        assert e["sigreg_loss"] > 0
        assert e["loss"] == pytest.approx(0.8 * e["task_loss"] + 0.2 * e["sigreg_loss"], rel=1e-5)
    assert "sigreg" in trainer._tag_names and "sft" in trainer._tag_names


def _lm_loss(outputs, labels, num_items_in_batch=None):
    logits = outputs.logits[:, :-1].float()
    target = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return total / (num_items_in_batch if num_items_in_batch is not None else target.ne(-100).sum())


def test_sft_hooks_record_only_the_gradient_carrying_forward(tmp_path):
    """With a compute_loss_func SFTTrainer runs a second, no-grad forward for its metrics. With alpha = 1 the
    task loss has weight 0: the gradient is nonzero only if the regulariser was taken from the gradient-carrying
    forward (recording the last forward gives grad_norm 0)."""
    args = SFTSIGRegConfig(output_dir=str(tmp_path), sigreg_mode="weak", sigreg_alpha=1.0, **SFT_COMMON)
    trainer = SFTSIGRegTrainer(model=_llama(), args=args, train_dataset=_sft_data(), processing_class=_tokenizer(),
                               compute_loss_func=_lm_loss)  # fmt: skip
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3 and all(e["grad_norm"] > 1e-3 and "mean_token_accuracy" in e for e in logs), logs


def test_hyperparameter_search_trains_each_trial_with_its_own_model_and_alpha(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fam = FAMILIES["vit"]
    trainer = SIGRegTrainer(
        model_init=lambda trial=None: fam.model(), args=training_args(tmp_path, max_steps=2, eval_strategy="no"),
        train_dataset=fam.data(16), eval_dataset=fam.data(8, seed=1),
    )  # fmt: skip
    alphas: list[float] = []

    def objective(metrics: dict[str, float]) -> float:
        logged = {e["sigreg_alpha"] for e in trainer.state.log_history if "sigreg_loss" in e}
        assert logged == {trainer.args.sigreg_alpha}  # the trial's alpha, with the regulariser on its model
        alphas.append(trainer.args.sigreg_alpha)
        return metrics["eval_loss"]

    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {"sigreg_alpha": trial.suggest_float("sigreg_alpha", 0.05, 0.5)},
        compute_objective=objective, n_trials=2, direction="minimize", backend="optuna",
    )  # fmt: skip
    assert len(alphas) == 2 and alphas[0] != alphas[1]
    assert best.hyperparameters["sigreg_alpha"] in alphas


def test_eval_loss_does_not_depend_on_the_evaluation_batch_size_under_strong_sigreg(tmp_path):
    """The old eval_loss mixed in strong SIGReg, which grows with N (2.59 at eval batch 16, 17.65 at 512)."""
    fam = FAMILIES["vit"]
    model = fam.model()
    data = fam.data(32, seed=4)
    metrics = {
        batch: SIGRegTrainer(
            model=model, args=training_args(tmp_path, sigreg_mode="strong", per_device_eval_batch_size=batch)
        ).evaluate(data)
        for batch in (4, 32)
    }
    assert metrics[4]["eval_loss"] == pytest.approx(metrics[32]["eval_loss"], rel=1e-5)
    assert metrics[32]["eval_sigreg_loss"] > 2 * metrics[4]["eval_sigreg_loss"]
