"""NautilusBacktester: the door to NautilusTrader. One fresh ``BacktestEngine`` per call,
disposed afterwards (research/backtest.py), so many pools run in one Dagster run without
sharing state."""

from __future__ import annotations

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field

from q50_assets.research.backtest import BacktestOutcome, BacktestSpec, run_pool_backtest


class NautilusBacktester(ConfigurableResource):
    enabled: bool = Field(default=True, description="nautilus_trader.enabled: false skips every backtest.")
    starting_capital_usd: float = 10_000.0
    taker_fee: float = Field(default=0.0025, description="DEX swap fee per side, charged by Nautilus' fee model.")
    max_reserve_fraction: float = 0.1
    min_trade_fraction: float = 0.02
    bar_seconds: int = 3600

    def spec(self, reserve_usd: float | None) -> BacktestSpec:
        return BacktestSpec(
            starting_capital_usd=self.starting_capital_usd,
            taker_fee=self.taker_fee,
            reserve_usd=reserve_usd,
            max_reserve_fraction=self.max_reserve_fraction,
            min_trade_fraction=self.min_trade_fraction,
            bar_length=pd.Timedelta(seconds=self.bar_seconds),
        )

    def run(self, pool_id: str, bars: pd.DataFrame, targets: pd.Series, reserve_usd: float | None) -> BacktestOutcome:
        """Backtest one pool: ``bars`` by open time, ``targets`` by the open time of the decision bar."""
        if not self.enabled:
            raise RuntimeError("NautilusTrader is disabled (nautilus_trader.enabled: false)")
        return run_pool_backtest(pool_id, bars, targets, self.spec(reserve_usd))
