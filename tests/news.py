"""Short news sentences and topic labels that several test modules classify with tiny models (whose scores
only need the words to vary)."""

TOPICS = ["business", "sports", "politics", "tech"]
NEWS = [
    "The central bank raised interest rates to fight inflation.",
    "The football club won the league after a dramatic final match.",
    "Parliament voted on the new election law.",
    "A new smartphone with a faster chip was released.",
    "Shares of the technology company rose after strong quarterly earnings.",
    "The tennis champion lost in the semi final.",
]
