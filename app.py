"""FRPT Studio: the router. `streamlit run app.py` opens the home page on the built-in offline demo; every page is
a file under pages/, registered here in reading order (st.navigation ignores the pages/ folder's own ordering)."""
import streamlit as st

from frpt.ui import through_router
from frpt.ui.auth import gate, locked

PAGES = {
    "": [st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True)],
    "Explore": [
        st.Page("pages/1_Prompt_explorer.py", title="Prompt explorer", icon=":material/center_focus_strong:"),
        st.Page("pages/6_Warp_gallery.py", title="Warp gallery", icon=":material/grid_view:"),
        st.Page("pages/2_Attributions.py", title="Attributions", icon=":material/local_fire_department:"),
        st.Page("pages/3_Embedding_space.py", title="Embedding space", icon=":material/scatter_plot:"),
    ],
    "Retrieve": [
        st.Page("pages/4_Retrieval.py", title="Retrieval", icon=":material/image_search:"),
        st.Page("pages/7_AB_retrieval.py", title="A/B retrieval", icon=":material/compare:"),
    ],
    "Results": [
        st.Page("pages/5_Checkpoints.py", title="Checkpoints", icon=":material/inventory_2:"),
        st.Page("pages/8_Reproduction.py", title="Reproduction", icon=":material/table_chart:"),
    ],
}

# A fresh server runs its first request through Streamlit's pages/ fallback, which runs this file as a page named
# "app" beside pages built from file names. Leave it (rerun under the navigation below) before anything else:
# st.navigation itself clears the flag through_router() reads, so after it the fallback can no longer be seen.
through_router()
# Serving mode (make serve): until this session gives the password, the page list is hidden and no page runs, only
# the gate. The URL's page (/Retrieval) is still resolved here, so it opens once the password is in.
is_locked = locked()
page = st.navigation(PAGES, position="hidden" if is_locked else "sidebar")
# Once for every page; a page may still override its own title (st.set_page_config is additive).
st.set_page_config(page_title="FRPT Studio" if is_locked else f"{page.title} · FRPT Studio", page_icon="🔎",
                   layout="wide")
gate()
page.run()
