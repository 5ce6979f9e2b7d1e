"""Word lists and filler text shared by the tasks. Everything is drawn from a caller's ``random.Random``.

Word pools are large enough for 128K-token contexts: unique names (first x last), locations (adjective x place),
items (adjective x material x object) and the pronounceable pseudo-words of the common-words task.
"""

from __future__ import annotations

import itertools
import random

FIRST = ("Ada Alma Amos Anya Arlo Basil Bea Bram Cora Cyrus Dara Dex Edie Elio Ember Ezra Faye Felix Flora Gus "
         "Hana Hugo Ida Ines Ivo Jada Jonah Juno Kai Kira Lars Lena Leo Lila Luca Mabel Milo Mira Nell Nico Nora "
         "Odin Olga Omar Opal Otto Pia Quinn Rafe Rhea Rosa Rufus Sade Saul Silas Tess Theo Tova Uma Ursa Vera "
         "Viggo Wade Wren Xena Yara Yuri Zane Zora").split()
LAST = ("Abbott Alder Ashby Barlow Birch Blake Brandt Calder Carver Coyle Dalton Drake Ellery Emmer Farrow Fenwick "
        "Garner Gray Hale Harlow Hollis Ives Jarvis Keane Kestrel Lark Lowell Marsh Merrow Nash Norwood Oakes Orr "
        "Pell Penrose Quill Radley Reeve Rowan Sable Shaw Sterling Thorne Tolliver Underhill Vance Voss Wilder "
        "Winslow Yates Yoder Zeller").split()
PLACE_ADJ = ("Amber Ashen Azure Bleak Bright Broken Copper Crimson Distant Dusky Emerald Faded Frozen Gilded Golden "
             "Hidden Hollow Iron Ivory Jade Lonely Lost Misty Moonlit Mossy Northern Old Pale Quiet Red Rusty Scarlet "
             "Shady Silent Silver Southern Stone Sunken Twin Velvet Whispering Wild Windy").split()
PLACE = ("Abbey Bazaar Bridge Canyon Castle Cathedral Cove Dock Falls Ferry Forest Fort Garden Gate Grove Harbor "
         "Inn Island Lagoon Library Lighthouse Market Meadow Mill Monastery Orchard Palace Pier Quarry Ridge Ruins "
         "Square Station Temple Tower Valley Vineyard Wharf").split()
ITEM_ADJ = ("ancient battered bright chipped curious delicate dented elegant faded gleaming heavy humble ornate "
            "painted polished quaint rugged shiny slender small smooth sturdy tarnished tiny weathered worn").split()
MATERIAL = ("bamboo brass bronze ceramic copper crystal ebony glass granite iron ivory jade leather linen marble "
            "oak pewter porcelain silk silver steel stone tin walnut wool").split()
OBJECT = ("amulet anchor basket bell bowl box brooch candle chalice clock compass cup dagger drum fan flask flute "
          "goblet helmet horn jar kettle key lamp lantern locket map mirror mug needle pendant pipe plate quill ring "
          "saddle scroll shield spoon statue teapot telescope thimble trowel trumpet vase whistle").split()

_ADJ = ("bright calm cold dark early gentle green heavy late little long narrow old quiet round small soft tall "
        "warm").split()
_NOUN = ("bird boat brook child cloud dog farmer field hill horse lake leaf morning path river road sailor sheep "
         "shop stone tree valley village wind window").split()
_VERB = ["crosses", "follows", "leaves", "meets", "passes", "reaches", "rests by", "turns toward", "waits near",
         "watches"]
_TAIL = ("before noon", "after the rain", "in the spring", "every evening", "at dawn", "without a sound",
         "as usual", "once again", "for a while", "in the autumn")


def filler_sentence(rng: random.Random) -> list[str]:
    """One plain sentence of everyday haystack text, as a list of words (the last ends with a period)."""
    words = (f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)} the {rng.choice(_ADJ)} "
             f"{rng.choice(_NOUN)} {rng.choice(_TAIL)}.").split()
    return words


def take_words(sentences: list[list[str]], n: int) -> list[str]:
    """The first ``n`` words of a list of sentences, as sentences (a cut sentence gets a period)."""
    out, left = [], n
    for s in sentences:
        if left <= 0:
            break
        part = s[:left]
        left -= len(part)
        text = " ".join(part)
        out.append(text if text.endswith(".") else text + ".")
    return out


def unique_names(rng: random.Random, k: int) -> list[str]:
    """``k`` distinct 'First Last' names."""
    return _sample_product(rng, k, FIRST, LAST)


def unique_places(rng: random.Random, k: int) -> list[str]:
    """``k`` distinct 'Adjective Place' locations."""
    return _sample_product(rng, k, PLACE_ADJ, PLACE)


def unique_items(rng: random.Random, k: int) -> list[str]:
    """``k`` distinct 'adjective material object' items."""
    return _sample_product(rng, k, ITEM_ADJ, MATERIAL, OBJECT)


def _sample_product(rng: random.Random, k: int, *lists: tuple | list) -> list[str]:
    combos = list(itertools.product(*lists))
    if k > len(combos):
        raise ValueError(f"asked for {k} unique combinations; only {len(combos)} exist")
    return [" ".join(c) for c in rng.sample(combos, k)]


_ONSET = "b c d f g h j k l m n p r s t v w z br cr dr fr gr pl st tr".split()
_NUCLEUS = "a e i o u ai ea ou".split()


def pseudo_words(rng: random.Random, k: int) -> list[str]:
    """``k`` distinct pronounceable lower-case pseudo-words of 2-3 syllables (about 10^6 possible)."""
    out, seen = [], set()
    while len(out) < k:
        w = "".join(rng.choice(_ONSET) + rng.choice(_NUCLEUS) for _ in range(rng.choice((2, 3))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class FillerStream:
    """An endless, seeded stream of filler sentences, generated on demand and cached (so ``take(n)`` for any
    ``n`` is a prefix of ``take(m)`` for ``m > n``)."""

    def __init__(self, seed: str, make=filler_sentence):
        self._rng = random.Random(seed)
        self._make = make
        self._sentences: list[list[str]] = []
        self._words = 0

    def take(self, n: int) -> list[str]:
        """The first ``n`` words as sentences."""
        while self._words < n:
            s = self._make(self._rng)
            self._sentences.append(s)
            self._words += len(s)
        return take_words(self._sentences, n)
