"""Pure builders of the monitor's figures and tables, and the writer that saves them."""
