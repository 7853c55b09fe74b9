"""Journal stores behind one interface (``base.JournalStore``); ``adapters`` names them."""
