"""Fine-tune a local Hugging Face causal LM on a text file with a plain Accelerate loop and a zerotrain ds_config.

    zerotrain config new --model hf:MODEL_DIR --gpus 2 --for accelerate --out ds_config.json
    accelerate launch --config_file accelerate_config.yaml examples/accelerate_finetune.py MODEL_DIR train.txt

accelerate_config.yaml points at ds_config.json, which holds the whole DeepSpeed setup: ZeRO stage, batch sizes,
precision and the optimizer. The loop takes the micro-batch and accumulation from it rather than asking for them,
and leaves the optimizer to DeepSpeed (DummyOptim) because the config defines one. Without a GPU set
DS_ACCELERATOR=cpu.
"""

import argparse
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DummyOptim, DummyScheduler, InitProcessGroupKwargs
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer


def packed_blocks(tokenizer, text_file: str, seq_len: int) -> torch.Tensor:
    """The whole file as one token stream cut into seq_len blocks: (n_blocks, seq_len)."""
    with open(text_file, encoding="utf-8") as f:
        ids = torch.tensor(tokenizer(f.read())["input_ids"])
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(
            f"{text_file} has {len(ids)} tokens, fewer than one block of {seq_len}; "
            "use a longer file or a smaller --seq-len"
        )
    return ids[: n * seq_len].view(n, seq_len)


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
    p.add_argument("--out", default="finetuned", help="where the fine-tuned model and tokenizer are saved")
    p.add_argument("--max-steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--lr", type=float, default=5e-4, help="only used when the ds_config has no optimizer")
    args = p.parse_args()

    # Accelerate (1.15) chooses a process-group backend only for accelerators: on a CPU it would run DeepSpeed
    # counting 1 process. Naming gloo makes it count every process.
    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    accelerator = Accelerator(kwargs_handlers=handlers)
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    micro_batch = ds_config["train_micro_batch_size_per_gpu"]
    accumulation = ds_config["gradient_accumulation_steps"]

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    # With zero3_init_flag (written for ZeRO-3) from_pretrained builds the model already partitioned.
    model = AutoModelForCausalLM.from_pretrained(args.model_dir)
    blocks = packed_blocks(tokenizer, args.text_file, args.seq_len)
    loader = DataLoader(
        blocks, batch_size=micro_batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )

    # An optimizer or scheduler in the ds_config is built by DeepSpeed: Accelerate then takes a Dummy placeholder
    # and refuses a real one (accelerate/accelerator.py, _prepare_deepspeed).
    if "optimizer" in ds_config:
        optimizer = DummyOptim(model.parameters())
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    if "scheduler" in ds_config:
        model, optimizer, loader, _ = accelerator.prepare(model, optimizer, loader, DummyScheduler(optimizer))
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.print(
        f"global batch {ds_config['train_batch_size']} = micro {micro_batch} × accumulation "
        f"{accumulation} × world {accelerator.num_processes}, ZeRO stage {model.zero_optimization_stage()}"
    )

    model.train()
    step, micro_step = 0, 0
    while step < args.max_steps:  # as many passes over the data as the steps need
        for batch in loader:
            loss = model(input_ids=batch, labels=batch).loss
            # accelerator.backward() runs the engine's backward and step; the engine steps the optimizer (and
            # scheduler) only at accumulation boundaries, so optimizer.step() here is a no-op placeholder.
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            micro_step += 1
            if micro_step % accumulation:
                continue
            step += 1
            # One host sync per optimizer step for the log line: the loss of this micro-batch, averaged over ranks.
            mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            accelerator.print(f"step {step}/{args.max_steps} | loss {mean_loss:.4f}")
            if step == args.max_steps:
                break

    # Under ZeRO-3 get_state_dict gathers the full 16-bit weights (stage3_gather_16bit_weights_on_model_save).
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(args.out, state_dict=state_dict)
        tokenizer.save_pretrained(args.out)
        print(f"saved {args.out} after {step} steps")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    leave_without_teardown_on_cpu()


if __name__ == "__main__":
    main()
