"""Model architectures and losses, written against ``keras.*`` only so that any Keras backend runs them."""
