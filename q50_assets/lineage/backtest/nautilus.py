"""NautilusBacktester: the door to NautilusTrader's settings. Engines are built per run by
research/backtest.py (one fresh ``BacktestEngine`` per run, disposed afterwards), so many pools
run in one Dagster run without sharing state. Nothing here imports NautilusTrader: the code
location loads, and everything up to signals and regimes runs, even when it cannot be imported
(the backtest stage then records ``status: unavailable``)."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field


class NautilusBacktester(ConfigurableResource):
    enabled: bool = Field(default=True, description="nautilus_trader.enabled: false skips every backtest.")
    starting_capital_usd: float = 10_000.0
    taker_fee: float = Field(default=0.0025, description="DEX swap fee per side, charged by Nautilus' fee model.")
    max_reserve_fraction: float = 0.1
    min_trade_fraction: float = 0.02
    bar_seconds: int = 3600
    fill_latency_bars: int = Field(default=1, description="Bars from a decision to its fill (the q50 variant).")
    fill_price: Literal["close", "typical"] = Field(default="close", description="Reference price of a delayed fill.")
    max_volume_share: float | None = Field(default=0.1, description="Largest fill as a share of the bar's USD volume.")

    def spec(self, reserve_usd: float | None = None):
        """The engines' BacktestSpec (reserves are set per pool by the stage)."""
        from q50_assets.lineage.backtest.engine import BacktestSpec

        return BacktestSpec(
            starting_capital_usd=self.starting_capital_usd,
            taker_fee=self.taker_fee,
            reserve_usd=reserve_usd,
            max_reserve_fraction=self.max_reserve_fraction,
            min_trade_fraction=self.min_trade_fraction,
            bar_length=pd.Timedelta(seconds=self.bar_seconds),
            fill_latency_bars=self.fill_latency_bars,
            fill_price=self.fill_price,
            max_volume_share=self.max_volume_share,
        )
