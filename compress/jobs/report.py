"""The report job: `compress report`'s page written from its inputs (`routing_report`), safely:
never inside an input or model folder, replacing only an earlier report with `overwrite`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportResult:
    path: Path
    size: int  # bytes

    def to_dict(self) -> dict:
        return {"path": str(self.path), "bytes": self.size}

    def summary(self) -> str:
        from ..display import human_bytes

        return f"report ({human_bytes(self.size)}) → {self.path}"


def report(inputs: list[str], out: str, *, model: str | None = None, prompts: list[str] = (), title: str | None = None,
           overwrite: bool = False) -> ReportResult:
    from ..checkpoint.output import claim_output
    from ..routing_report.collect import collect
    from ..routing_report.page import is_report_file, render_page

    models = [path for path in (*inputs, model) if path and Path(path).is_dir()]
    with claim_output(out, kind="file", overwrite=overwrite, flag="-o", sources=models, recognise=is_report_file,
                      what="report") as claimed:
        page = render_page(collect(list(inputs), model=model, prompts=list(prompts), title=title)).encode("utf-8")
        with claimed.write() as staging:
            staging.write_bytes(page)
    return ReportResult(claimed.path, len(page))
