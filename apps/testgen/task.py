"""The recipe's `task:` section of testgen (what the app, the pipeline and the CLI share)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SandboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(30.0, gt=0, description="wall clock per test run")
    cpu_s: int = Field(60, ge=1)
    memory_mb: int = Field(2048, ge=64)
    processes: int = Field(64, ge=4)
    file_mb: int = Field(256, ge=1, description="the largest file a test may write")
    disk_mb: int = Field(1024, ge=16, description="what the project copy may grow to, all files together")

    def limits(self):
        from .sandbox import Limits

        return Limits(self.timeout_s, self.cpu_s, self.memory_mb, self.processes, self.file_mb, self.disk_mb)


class TestGenTask(BaseModel):
    """The recipe's `task:` section."""
    model_config = ConfigDict(extra="forbid")
    execute: bool = Field(True, description="eval: run Python tests whose records name a project (pass rate, "
                                            "coverage)")
    candidates: int = Field(4, ge=1, description="testgen generate: candidate tests per function (--n)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature of candidates (the first is greedy)")
    max_new_tokens: int = Field(256, ge=8)
    workers: int = Field(0, ge=0, description="sandbox runs in parallel (0: one per CPU core)")
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
