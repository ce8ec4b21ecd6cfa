"""AWD-LSTM (Merity, Keskar & Socher 2018), as used by the AdaBelief/EAdam PTB experiments.

Embedding -> embedding dropout (whole words) -> locked dropout -> one ``nn.LSTM`` per layer with
DropConnect on its hidden-to-hidden matrix -> locked dropout between layers and on the output ->
decoder tied to the embedding. The last layer outputs ``emsize`` units so the tie works; a 1-layer
model is emsize -> emsize and never uses ``nhid``.

DropConnect without the reference's parameter-deletion hack: each layer is a plain ``nn.LSTM``
whose ``weight_hh_l0`` stays its registered Parameter (the optimizer, ``state_dict`` and
``flatten_parameters`` see the raw weight). In training the forward pass runs the LSTM through
``torch.func.functional_call`` with a dropped copy of that weight in its place, so gradients flow
to the raw weight through the dropout mask. In evaluation the LSTM is called as is.

``freeze_weight_hh=True`` reproduces what the papers' code actually trained: the reference
WeightDrop (AdaBelief repo ``PyTorch_Experiments/LSTM/weight_drop.py:42``, EAdam's copy identical)
wraps the dropped matrix in a fresh ``Parameter``, which cuts it from the graph, so the raw
hidden-to-hidden weights never get a gradient and stay at their initialisation while the DropConnect
masks are still applied to them. Frozen here means ``requires_grad=False`` on ``weight_hh_l0``
(its biases and input weights still train); ``False`` trains it, the evident intent.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

State = tuple[torch.Tensor, torch.Tensor]  # (h, c) of one layer, each (1, batch, size)
Hidden = list[State]


def embedded_dropout(embed: nn.Embedding, words: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embedding lookup with whole rows (words) of the table dropped with probability ``p``: a word
    dropped in a batch is dropped at every position it occurs. Survivors are scaled by 1/(1-p)."""
    weight = embed.weight
    if training and p > 0:
        mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    return F.embedding(words, weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                       embed.scale_grad_by_freq, embed.sparse)


class LockedDropout(nn.Module):
    """Variational dropout on ``(time, batch, features)``: one mask per sequence, shared over time."""

    def forward(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if not self.training or p == 0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
        return x * mask


#: cuDNN warns when an RNN's weights are not one flat buffer; with DropConnect the dropped
#: hidden-to-hidden matrix is a fresh tensor each step, so the weights cannot be (the reference
#: had the same copy). The warning is silenced for exactly that call and nothing else.
_NOT_CONTIGUOUS = r".*RNN module weights are not part of single contiguous chunk of memory.*"


class WeightDropLSTM(nn.Module):
    """One-layer ``nn.LSTM`` with DropConnect (probability ``p``) on ``weight_hh_l0``; with
    ``freeze_weight_hh`` that weight is never trained (the reference's behaviour, module docstring)."""

    def __init__(self, input_size: int, hidden_size: int, p: float, freeze_weight_hh: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=1)
        self.p = p
        self.freeze_weight_hh = freeze_weight_hh
        self.lstm.weight_hh_l0.requires_grad_(not freeze_weight_hh)

    def forward(self, x: torch.Tensor, hx: State) -> tuple[torch.Tensor, State]:
        if not self.training or self.p == 0:
            return self.lstm(x, hx)
        dropped = F.dropout(self.lstm.weight_hh_l0, p=self.p, training=True)
        quiet = warnings.catch_warnings() if x.is_cuda else contextlib.nullcontext()
        with quiet:
            if x.is_cuda:
                warnings.filterwarnings("ignore", message=_NOT_CONTIGUOUS)
            return functional_call(self.lstm, {"weight_hh_l0": dropped}, (x, hx))


class AWDLSTM(nn.Module):
    """The AWD-LSTM language model; ``forward`` returns logits of shape ``(T*B, ntoken)``."""

    def __init__(self, ntoken: int, emsize: int = 400, nhid: int = 1150, nlayers: int = 3,
                 dropout: float = 0.4, dropouth: float = 0.25, dropouti: float = 0.4, dropoute: float = 0.1,
                 wdrop: float = 0.5, tied: bool = True, init_range: float = 0.1,
                 freeze_weight_hh: bool = False) -> None:
        super().__init__()
        self.ntoken, self.emsize, self.nhid, self.nlayers = ntoken, emsize, nhid, nlayers
        self.dropout, self.dropouth, self.dropouti, self.dropoute = dropout, dropouth, dropouti, dropoute
        self.tied = tied
        self.lockdrop = LockedDropout()
        self.encoder = nn.Embedding(ntoken, emsize)
        last = emsize if tied else nhid
        self.sizes = [nhid] * (nlayers - 1) + [last]
        inputs = [emsize, *self.sizes[:-1]]
        pairs = zip(inputs, self.sizes, strict=True)
        self.rnns = nn.ModuleList(WeightDropLSTM(n_in, n_out, wdrop, freeze_weight_hh) for n_in, n_out in pairs)
        self.decoder = nn.Linear(self.sizes[-1], ntoken)
        nn.init.uniform_(self.encoder.weight, -init_range, init_range)
        nn.init.zeros_(self.decoder.bias)
        if tied:
            self.decoder.weight = self.encoder.weight  # one Parameter, one storage
        else:
            nn.init.uniform_(self.decoder.weight, -init_range, init_range)

    def init_hidden(self, batch_size: int) -> Hidden:
        weight = self.encoder.weight
        return [(weight.new_zeros(1, batch_size, h), weight.new_zeros(1, batch_size, h)) for h in self.sizes]

    def forward(self, words: torch.Tensor,
                hidden: Hidden) -> tuple[torch.Tensor, Hidden, list[torch.Tensor], list[torch.Tensor]]:
        """``words`` (T, B) -> (logits (T*B, ntoken), new hidden, raw layer outputs, dropped layer
        outputs). The last two feed activation regularization (AR on the dropped output of the
        last layer, TAR on its raw output), as in the reference."""
        emb = embedded_dropout(self.encoder, words, self.dropoute, self.training)
        output = self.lockdrop(emb, self.dropouti)
        new_hidden: Hidden = []
        raw_outputs, outputs = [], []
        for layer, rnn in enumerate(self.rnns):
            output, h = rnn(output, hidden[layer])
            new_hidden.append(h)
            raw_outputs.append(output)
            if layer != self.nlayers - 1:
                output = self.lockdrop(output, self.dropouth)
                outputs.append(output)
        output = self.lockdrop(output, self.dropout)
        outputs.append(output)
        logits = self.decoder(output.reshape(-1, output.size(2)))
        return logits, new_hidden, raw_outputs, outputs


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between BPTT windows while carrying the state over."""
    return [(h.detach(), c.detach()) for h, c in hidden]


__all__ = ["AWDLSTM", "LockedDropout", "WeightDropLSTM", "detach_hidden", "embedded_dropout"]
