"""Reproduction: our measured rows (bench/results.json, and results_gpu.json from a lent GPU) beside the paper's
Tables 1, 2 and 5."""
import streamlit as st

from frpt import reproduction as rep
from frpt.ui import gate, through_router

through_router()  # the page draws no sidebar (which does this for the other pages)
gate()  # serving mode: the password first

st.title("Reproduction")
try:
    results = rep.load_results()
    rows = results.rows
except rep.ResultsError as exc:
    results, rows = None, ()
    st.warning(str(exc))

ours = f"Ours are measured with **{rep.our_setting(rows)}**, with short training profiles" if rows else \
    "Rows of ours come from bench/results.json"
st.info(f"The paper's figures are **{rep.PAPER_SETTING}**. {ours}. A row of ours stands beside the paper row whose "
        "part it plays (same variant); it is not the same experiment, and the gap is no measure of a reproduction "
        "error.", icon=":material/info:")
if results and results.skipped:
    st.caption(f"{results.skipped} record(s) of results.json lack a field the comparison needs and are left out.")

left, mid, right = st.columns([1, 2, 3])
dataset = left.selectbox("Dataset", list(rep.DATASET_NAMES), format_func=rep.DATASET_NAMES.get, key="rep.dataset")
presets = sorted({r.preset for r in rows})
profiles = sorted({r.profile for r in rows})
chosen_presets = mid.multiselect("Our presets", presets, default=presets, key="rep.presets")
chosen_profiles = right.multiselect("Our profiles", profiles, default=profiles, key="rep.profiles")
best_only = st.toggle("Only the best row of each preset and profile", key="rep.best",
                      help="Keep the highest-R@1 row of each preset and profile (e.g. the bounded DPP among "
                           "published / slow / bounded).")
shown = [r for r in rows if r.preset in chosen_presets and r.profile in chosen_profiles]
groups = sorted({r.group for r in shown})  # one colour per preset/profile on every chart
if rows and not any(r.dataset == dataset for r in rows):
    st.caption(f"No row of ours on {rep.DATASET_NAMES[dataset]} yet: the paper's numbers only.")

PCT = st.column_config.NumberColumn(format="%.1f")
COLUMNS = {**{f"{who} R@{k}": PCT for who in ("paper", "ours") for k in rep.KS}, "ours - paper R@1": PCT,
           "ours MAP@R": PCT, "learned params": st.column_config.NumberColumn(format="localized")}
for tab, table in zip(st.tabs(list(rep.TABLES)), rep.TABLES):
    with tab:
        lines = rep.comparison(shown, table, dataset, best_only)
        if not lines:
            st.caption(f"{table} reports nothing on {rep.DATASET_NAMES[dataset]}.")
            continue
        st.caption(rep.TABLES[table])
        st.plotly_chart(rep.figure(lines, groups), key=f"rep.fig.{table}")
        st.dataframe(lines, hide_index=True, key=f"rep.table.{table}", column_config=COLUMNS,
                     column_order=rep.columns(lines))

st.subheader("Where each row of ours comes from")
st.dataframe(rep.provenance(shown), hide_index=True, key="rep.provenance",
             column_config={"command": st.column_config.TextColumn("command", width="large")})

everything = [line for table in rep.TABLES for line in rep.comparison(shown, table, None, best_only)]
a, b = st.columns(2)
a.download_button("Download comparison (CSV)", rep.to_csv(everything), file_name="frpt-reproduction.csv",
                  mime="text/csv", key="rep.csv")
if results:
    b.download_button("Download our rows (JSON)", results.raw, file_name="results.json", mime="application/json",
                      key="rep.json")
