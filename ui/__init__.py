"""ragft ui: the Streamlit chat app (streamlit run ui/app.py)."""
