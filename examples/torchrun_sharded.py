"""Train a model whose hierarchical-softmax output layer is sharded over the ranks of a group.

    torchrun --nproc_per_node=2 examples/torchrun_sharded.py            # CPU: gloo
    torchrun --nproc_per_node=8 examples/torchrun_sharded.py --classes 10000000 --dim 512
                                                                        # GPUs: NCCL, one per rank
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        examples/torchrun_sharded.py ...                                # several nodes

Every rank of the group sees the same batch (tensor parallelism, as Megatron-LM's
vocabulary-parallel output layer): the model body is replicated here, the output layer's node
table is split by subtrees (``hsoftmax.distributed``). Each rank prints what it holds; rank 0
prints the loss, the bytes each rank exchanged per step against Megatron's vocab-parallel
cross-entropy formula, and checks at the end that the gathered layer (``to_full``) scores the
batch exactly as the sharded one. ``--save PATH`` writes the gathered layer's state dict on
rank 0: an ordinary ``HierarchicalSoftmax`` checkpoint.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hsoftmax import Tree
from hsoftmax.distributed import ShardedHierarchicalSoftmax
from hsoftmax.optim import paired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--save", help="write the gathered (unsharded) layer's state dict here, on rank 0")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    # Zipf class frequencies: word2vec's Huffman tree over them. Every rank builds the same tree.
    zipf = 1.0 / np.arange(1, args.classes + 1)
    tree = Tree.huffman(zipf)
    torch.manual_seed(0)  # the replicated body starts the same on every rank
    body = nn.Sequential(nn.Linear(32, args.dim), nn.Tanh()).to(device)
    head = ShardedHierarchicalSoftmax(args.dim, tree, sparse=True, device=device, counts=zipf)
    model = nn.ModuleDict({"body": body, "head": head})
    opt = paired(model, torch.optim.SGD, lr=args.lr)  # SparseSGD for the node tables
    held = sum(p.numel() * p.element_size() for p in head.parameters())
    print(
        f"rank {rank}/{world}: {len(head.subtrees)} subtrees, {held / 2**20:.1f} MiB of node table "
        f"(the whole table: {tree.num_params * (args.dim + 1) * 4 / 2**20:.1f} MiB); {head.plan.summary()}",
        flush=True,
    )

    # A synthetic task: the class is a fixed random function of the input's first coordinates.
    g = torch.Generator().manual_seed(1)  # the same batches on every rank
    probs = torch.from_numpy(zipf / zipf.sum())
    for step in range(args.steps):
        y = torch.multinomial(probs, args.batch, replacement=True, generator=g).to(device)
        x = torch.randn(args.batch, 32, generator=g).to(device)
        x[:, 0] = (y % 7).float() / 7  # something to learn
        before = dict(head.comm_bytes)
        loss = head(body(x), y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            sent = sum(head.comm_bytes.values()) - sum(before.values())
            B, d, f = args.batch, args.dim, 4
            print(
                f"step {step:4d}  loss {loss.item():.4f}  sent per rank {sent} bytes "
                f"(ours: B*4 + B*d*4 = {B * f + B * d * f}; Megatron vocab-parallel CE: "
                f"3*B*4 + B*d*4 = {3 * B * f + B * d * f})",
                flush=True,
            )

    with torch.no_grad():
        h = body(x)
        sharded_loss = head(h, y).loss
        top5 = head.topk(h[:4], 5)
    full = head.to_full(dst=0)
    if rank == 0:
        assert full is not None
        torch.testing.assert_close(full(h, y).loss, sharded_loss)
        assert torch.equal(full.topk(h[:4], 5).indices, top5.indices)
        print("gathered layer == sharded layer: loss and top-5 agree", flush=True)
        if args.save:
            torch.save(full.state_dict(), args.save)
            print(f"saved the unsharded layer to {args.save}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
