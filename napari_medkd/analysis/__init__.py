"""Qt-free analysis that the widgets display: region graphs, alignment maps, feature taps, the FSD probe."""
