"""One connector per backend (POS, WMS, ERP, commerce), each on its own long-lived HTTP
client (``http``)."""
