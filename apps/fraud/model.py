"""The fraud model: an LSTM over the card's recent transactions + a GNN over the card-terminal graph.

Three views of one transaction meet in a small head:

- the tabular features of ``apps.fraud.features`` (counts, amounts, terminal risk, time),
  log-scaled and standardised with statistics fitted on the training rows (kept as buffers, so
  they travel in the safetensors file);
- the card's last ``SEQ_LEN`` transactions (``STEP_NAMES`` per step, the scored one last) through
  an LSTM;
- the card's and the terminal's node embeddings from a heterogeneous graph attention network
  (torch-geometric ``GATConv`` in both directions of the card-terminal edges) over the day's
  ``GraphSnapshot``, which holds only transactions before that day.

Class imbalance is handled in training by sampling negatives (``neg_rate``) and a positive
weight; ``logit_offset`` (= log of the sampling rate) turns the trained logits back into
probabilities of the real base rate. Shapes::

    model = FraudNet(FraudModelConfig())
    card_table, terminal_table = model.embed_graph(graph)   # one GraphTensors per day
    logits = model(features, sequences, card_table[card_node], terminal_table[terminal_node])
    # features (B, 20), sequences (B, SEQ_LEN, 6), tables (nodes, gnn_hidden) -> logits (B,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import GATConv

from apps.fraud.features import FEATURE_NAMES, SEQ_LEN, STEP_NAMES
from apps.fraud.graph import CARD_NODE_NAMES, TERMINAL_NODE_NAMES, GraphSnapshot
from core.config import ConfigMixin

# features that are counts or amounts: log1p before standardising
LOG_FEATURES = tuple(
    i for i, name in enumerate(FEATURE_NAMES) if name == "amount" or "_n_" in name or "_amount_" in name
)
Z_FEATURES = tuple(i for i, name in enumerate(FEATURE_NAMES) if name.endswith("_z_30d"))
Z_CLIP = 20.0
CARD, TERMINAL = "card", "terminal"
USES = (CARD, "uses", TERMINAL)
USED_BY = (TERMINAL, "used_by", CARD)


@dataclass
class FraudModelConfig(ConfigMixin):
    """The network's shape (YAML section ``model``).

    Args:
        hidden: width of the tabular branch and of the head.
        seq_hidden: LSTM hidden size.
        gnn_hidden: node embedding size.
        gnn_layers: graph attention layers (each card <-> terminal, both directions).
        gnn_heads: attention heads per layer (concatenated, so ``gnn_hidden`` must divide).
        dropout: in the head.
        use_sequence, use_graph: switch the LSTM or the GNN branch off (ablations).
    """

    yaml_section: ClassVar[str] = "model"

    hidden: int = 64
    seq_hidden: int = 32
    gnn_hidden: int = 32
    gnn_layers: int = 2
    gnn_heads: int = 2
    dropout: float = 0.1
    use_sequence: bool = True
    use_graph: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden", "seq_hidden", "gnn_hidden", "gnn_layers", "gnn_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gnn_hidden % self.gnn_heads:
            raise ValueError(
                f"gnn_hidden ({self.gnn_hidden}) must be a multiple of gnn_heads ({self.gnn_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class GraphTensors:
    """A ``GraphSnapshot`` as tensors on one device."""

    x_card: torch.Tensor
    x_terminal: torch.Tensor
    edge_index: torch.Tensor  # (2, E) card row, terminal row
    edge_attr: torch.Tensor  # (E, 1)

    @classmethod
    def from_snapshot(cls, snapshot: GraphSnapshot, device: str | torch.device = "cpu") -> GraphTensors:
        return cls(
            torch.from_numpy(snapshot.x_card).to(device),
            torch.from_numpy(snapshot.x_terminal).to(device),
            torch.from_numpy(snapshot.edge_index).to(device),
            torch.from_numpy(snapshot.edge_attr).to(device),
        )

    def to_hetero(self):  # -> torch_geometric.data.HeteroData
        """The same graph as a PyG ``HeteroData`` (node types card/terminal, both edge directions)."""
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data[CARD].x = self.x_card
        data[TERMINAL].x = self.x_terminal
        data[USES].edge_index = self.edge_index
        data[USES].edge_attr = self.edge_attr
        data[USED_BY].edge_index = self.edge_index.flip(0)
        data[USED_BY].edge_attr = self.edge_attr
        return data


class _GraphLayer(nn.Module):
    """card -> terminal and terminal -> card attention, with residuals and layer norm."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        kwargs = {"heads": heads, "add_self_loops": False, "edge_dim": 1}
        self.to_terminal = GATConv((dim, dim), dim // heads, **kwargs)
        self.to_card = GATConv((dim, dim), dim // heads, **kwargs)
        self.norm_card = nn.LayerNorm(dim)
        self.norm_terminal = nn.LayerNorm(dim)

    def forward(
        self,
        h_card: torch.Tensor,
        h_terminal: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: torch.Tensor,
        attention: bool = False,
    ):
        reverse = edge_index.flip(0)
        if attention:
            t, (_, alpha_t) = self.to_terminal(
                (h_card, h_terminal), edge_index, edge_attr, return_attention_weights=True
            )
            c, (_, alpha_c) = self.to_card(
                (h_terminal, h_card), reverse, edge_attr, return_attention_weights=True
            )
            alpha = (alpha_c, alpha_t)
        else:
            t = self.to_terminal((h_card, h_terminal), edge_index, edge_attr)
            c = self.to_card((h_terminal, h_card), reverse, edge_attr)
            alpha = None
        h_terminal = self.norm_terminal(h_terminal + torch.relu(t))
        h_card = self.norm_card(h_card + torch.relu(c))
        return h_card, h_terminal, alpha


class FraudNet(nn.Module):
    """See the module docstring. ``forward`` returns logits of the real base rate (offset applied)."""

    def __init__(self, config: FraudModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FraudModelConfig()
        n_features = len(FEATURE_NAMES)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("logit_offset", torch.zeros(()))
        self.tabular = nn.Sequential(
            nn.Linear(n_features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU()
        )
        width = cfg.hidden
        if cfg.use_sequence:
            self.lstm = nn.LSTM(len(STEP_NAMES), cfg.seq_hidden, batch_first=True)
            width += cfg.seq_hidden
        if cfg.use_graph:
            g = cfg.gnn_hidden
            self.card_in = nn.Linear(len(CARD_NODE_NAMES), g)
            self.terminal_in = nn.Linear(len(TERMINAL_NODE_NAMES), g)
            self.graph_layers = nn.ModuleList(_GraphLayer(g, cfg.gnn_heads) for _ in range(cfg.gnn_layers))
            width += 2 * g
        self.head = nn.Sequential(
            nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 1)
        )

    # --- inputs ------------------------------------------------------------------------------------
    @staticmethod
    def transform(features: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw ``FEATURE_NAMES`` values -> log-scaled, clipped float32 (before standardising)."""
        x = torch.as_tensor(features, dtype=torch.float32).clone()
        idx = list(LOG_FEATURES)
        x[:, idx] = torch.log1p(x[:, idx].clamp_min(0))
        zi = list(Z_FEATURES)
        x[:, zi] = x[:, zi].clamp(-Z_CLIP, Z_CLIP)
        return x

    def fit_normalisation(self, features: np.ndarray) -> None:
        """Set the standardisation statistics from training rows (raw features)."""
        x = self.transform(features)
        self.feature_mean.copy_(x.mean(0))
        self.feature_std.copy_(x.std(0).clamp_min(1e-3))

    # --- graph ------------------------------------------------------------------------------------
    def embed_graph(
        self, graph: GraphTensors, attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Card and terminal embeddings ``(n_cards + 1, gnn_hidden)``, ``(n_terminals + 1, gnn_hidden)``.

        With ``attention``, also the last layer's attention per edge of ``graph.edge_index`` as a
        pair ``(terminal -> card, card -> terminal)``, each ``(E, heads)``: how much each terminal
        a card used shaped the card's embedding, and each card of a terminal the terminal's.
        """
        if not self.config.use_graph:
            raise ValueError("this model was built with use_graph=False")
        h_card = torch.relu(self.card_in(graph.x_card))
        h_terminal = torch.relu(self.terminal_in(graph.x_terminal))
        alpha = None
        for i, layer in enumerate(self.graph_layers):
            last = i == len(self.graph_layers) - 1
            h_card, h_terminal, a = layer(
                h_card, h_terminal, graph.edge_index, graph.edge_attr, attention=attention and last
            )
            alpha = a if a is not None else alpha
        if attention:
            return h_card, h_terminal, alpha
        return h_card, h_terminal

    # --- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        features: torch.Tensor,
        sequences: torch.Tensor | None = None,
        card_emb: torch.Tensor | None = None,
        terminal_emb: torch.Tensor | None = None,
        *,
        normalised: bool = False,
    ) -> torch.Tensor:
        """Logits ``(B,)``.

        Args:
            features: ``(B, len(FEATURE_NAMES))`` raw features, or already ``transform``-ed and
                standardised when ``normalised`` (as explanations pass them).
            sequences: ``(B, SEQ_LEN, len(STEP_NAMES))`` (needed when ``use_sequence``).
            card_emb, terminal_emb: ``(B, gnn_hidden)`` rows of ``embed_graph`` (when ``use_graph``).
        """
        if features.dim() != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features must be (B, {len(FEATURE_NAMES)}), got {tuple(features.shape)}")
        x = features if normalised else (self.transform(features) - self.feature_mean) / self.feature_std
        parts = [self.tabular(x)]
        if self.config.use_sequence:
            if sequences is None or sequences.shape[1:] != (SEQ_LEN, len(STEP_NAMES)):
                got = None if sequences is None else tuple(sequences.shape)
                raise ValueError(f"sequences must be (B, {SEQ_LEN}, {len(STEP_NAMES)}), got {got}")
            _, (h, _) = self.lstm(sequences)
            parts.append(h[-1])
        if self.config.use_graph:
            if card_emb is None or terminal_emb is None:
                raise ValueError("this model needs card and terminal embeddings (use_graph=True)")
            parts += [card_emb, terminal_emb]
        return self.head(torch.cat(parts, dim=1)).squeeze(1) + self.logit_offset

    def normalise(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw features -> the standardised input of the tabular branch (for attributions)."""
        return (self.transform(features) - self.feature_mean) / self.feature_std


def load_rows(
    prepared, rows: np.ndarray, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and sequences of ``rows`` of a ``Prepared`` as float32 tensors on ``device``."""
    features = torch.from_numpy(prepared.features[rows].astype(np.float32)).to(device)
    sequences = torch.from_numpy(prepared.sequences(rows)).to(device)
    return features, sequences


@torch.no_grad()
def score_prepared(
    model: FraudNet,
    prepared,
    rows: np.ndarray | None = None,
    *,
    device: str | torch.device = "cpu",
    chunk: int = 32_768,
) -> np.ndarray:
    """Fraud probabilities ``(len(rows),)`` float32 of ``rows`` (default all) of a ``Prepared``.

    Rows are grouped by their day graph, so each snapshot is embedded once.

    Raises:
        ValueError: the model uses the graph but ``prepared`` has no snapshots.
    """
    model.eval()
    rows = np.arange(len(prepared)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.float32)
    if model.config.use_graph:
        if len(rows) and (prepared.snapshot[rows] < 0).any():
            raise ValueError("the model uses the card-terminal graph: prepare(..., snapshots=True)")
        groups = prepared.snapshot[rows]
    else:
        groups = np.zeros(len(rows), dtype=np.int32)
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        tables = None
        if model.config.use_graph:
            tables = model.embed_graph(GraphTensors.from_snapshot(prepared.snapshots[g], device))
        for start in range(0, len(where), chunk):
            pos = where[start : start + chunk]
            r = rows[pos]
            features, sequences = load_rows(prepared, r, device)
            card = terminal = None
            if tables is not None:
                card = tables[0][torch.from_numpy(prepared.card_node[r]).to(device)]
                terminal = tables[1][torch.from_numpy(prepared.terminal_node[r]).to(device)]
            out[pos] = torch.sigmoid(model(features, sequences, card, terminal)).float().cpu().numpy()
    return out
