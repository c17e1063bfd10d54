#!/usr/bin/env bash
# Run one experiment preset and copy its analysis (report.md, report.html and its rendered
# report.png, fits, figures) into experiments/.
# Usage: bash scripts/reproduce_study.sh <preset> [<study folder>] [extra Hydra overrides...]
#   bash scripts/reproduce_study.sh width_sweep_cpu width_sweep
# The sweep itself is written under outputs/studies/<preset>/<time>/ (not kept in git).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="$1"; study="${2:-$1}"; shift $(( $# >= 2 ? 2 : 1 ))
sweep_dir="outputs/studies/${preset}/$(date +%Y-%m-%d_%H-%M-%S)"
start=$(date +%s)
python -m ntk_lab.run -m "experiment=${preset}" "hydra.sweep.dir=${sweep_dir}" "$@"
end=$(date +%s)
dest="experiments/${study}/${preset}"
mkdir -p "$dest"
cp "${sweep_dir}/analysis/report.md" "${sweep_dir}/analysis/report.html" \
   "${sweep_dir}/analysis/fits.csv" "$dest/"
cp "${sweep_dir}"/analysis/*.png "$dest/" 2>/dev/null || true
# the study tables some analyses add (catapult.csv, lr_transfer.csv, their fits), not runs.csv
for table in "${sweep_dir}"/analysis/*.csv; do
  case "$(basename "$table")" in runs.csv|fits.csv) ;; *) cp "$table" "$dest/" ;; esac
done
# A picture of report.html beside it, when headless Chromium is installed (apt-get install chromium).
python -m ntk_lab.analysis.render "$dest/report.html" "$dest/report.png" \
  || echo "report.png not rendered (no Chromium?); report.html is there"
echo "wall time $((end - start)) s; sweep in ${sweep_dir}; analysis copied to ${dest}"
