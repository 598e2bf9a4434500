"""Fine-tune a local Hugging Face causal LM on a text file with transformers.Trainer and a zerotrain ds_config.

    zerotrain config new --model hf:MODEL_DIR --gpus 2 --for hf-trainer --out ds_config.json
    torchrun --nproc_per_node 2 examples/hf_trainer_finetune.py MODEL_DIR train.txt --deepspeed ds_config.json

(`deepspeed --num_gpus 2 examples/hf_trainer_finetune.py ...` launches it too.) The ds_config's "auto" fields —
batch sizes, clipping, optimizer and scheduler values, bf16 — are filled by the Trainer from the
TrainingArguments below, so the file is used as written. Without a GPU set DS_ACCELERATOR=cpu: DeepSpeed then
runs on the CPU over gloo, in fp32.
"""

import argparse
import os
import sys

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator


def packed_blocks(tokenizer, text_file: str, seq_len: int) -> list[dict]:
    """The whole file as one token stream cut into seq_len blocks; the labels are the inputs (the model shifts them)."""
    with open(text_file, encoding="utf-8") as f:
        ids = torch.tensor(tokenizer(f.read())["input_ids"])
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(
            f"{text_file} has {len(ids)} tokens, fewer than one block of {seq_len}; "
            "use a longer file or a smaller --seq-len"
        )
    return [{"input_ids": block, "labels": block} for block in ids[: n * seq_len].view(n, seq_len)]


def leave_without_teardown_on_cpu():
    """On CPU (gloo) a finished rank can abort in interpreter shutdown: a gloo worker thread releases the last
    tensor of a collective after Python has begun finalizing, cannot take the GIL, and std::terminate() fires
    ("terminate called without an active exception"; seen in about 1 in 5 ZeRO-3 runs, torch 2.13,
    c10d::ProcessGroupGloo::runLoop). Everything is saved by now, so leave without the teardown."""
    if not torch.cuda.is_available():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", help="a local Hugging Face causal LM directory (config.json, weights, tokenizer)")
    p.add_argument("text_file", help="plain text to continue-train on")
    p.add_argument("--deepspeed", required=True, help="ds_config.json from `zerotrain config new --for hf-trainer`")
    p.add_argument("--out", default="finetuned", help="where the fine-tuned model and tokenizer are saved")
    p.add_argument("--max-steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per process per micro-step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument(
        "--save-steps",
        type=int,
        default=0,
        help="also write a Trainer checkpoint (DeepSpeed's global_stepN/, latest, zero_to_fp32.py) every this many "
        "steps into --out/checkpoint-N/; `zerotrain export CKPT --config MODEL_DIR` exports one",
    )
    p.add_argument("--local_rank", type=int, default=-1, help="passed by the deepspeed launcher; unused")
    args = p.parse_args()

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        # Accelerate (1.15) chooses a process-group backend only for accelerators: on a CPU the Trainer would
        # count 1 process and fill train_batch_size for a world of 1, which DeepSpeed then rejects. Setting up
        # the DeepSpeed state over gloo first, and letting the Trainer reuse it, counts every process.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
    training_args = TrainingArguments(
        output_dir=args.out,
        deepspeed=args.deepspeed,  # used as written; its "auto" fields are filled from the arguments below
        max_steps=args.max_steps,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        warmup_steps=max(1, args.max_steps // 10),
        max_grad_norm=1.0,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),  # CPU matmuls are fastest in fp32
        logging_steps=1,
        save_strategy="steps" if args.save_steps else "no",  # without checkpoints: one save, at the end
        save_steps=args.save_steps or 500,
        report_to="none",
        seed=0,
        accelerator_config={"use_configured_state": not on_gpu},
    )
    ds = training_args.hf_deepspeed_config.config  # with the "auto" fields filled in
    if training_args.process_index == 0:
        print(
            f"global batch {ds['train_batch_size']} = micro {ds['train_micro_batch_size_per_gpu']} × accumulation "
            f"{ds['gradient_accumulation_steps']} × world {training_args.world_size}, "
            f"ZeRO stage {ds['zero_optimization']['stage']}"
        )

    # Loaded after TrainingArguments on purpose: under ZeRO-3 it has registered the ds_config, and
    # from_pretrained then builds the model already partitioned (deepspeed.zero.Init), never whole on one rank.
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir)
    train_set = packed_blocks(tokenizer, args.text_file, args.seq_len)

    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, data_collator=default_data_collator)
    trainer.train()
    # Under ZeRO-3 this gathers the full weights first (stage3_gather_16bit_weights_on_model_save in the config).
    trainer.save_model(args.out)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.out)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print(
            f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {trainer.state.global_step} steps "
            f"(ZeRO stage {trainer.model_wrapped.zero_optimization_stage()}); saved {args.out}"
        )
    training_args.distributed_state.wait_for_everyone()
    leave_without_teardown_on_cpu()


if __name__ == "__main__":
    main()
