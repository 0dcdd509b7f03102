"""Write conf/vocab/pinyin.csv: the toneless pinyin of every GB2312 character (6,763 Han characters, which
cover Chinese personal names in practice), with the surname reading where a surname reads differently.

The readings come from pypinyin (https://github.com/mozillazg/python-pinyin), a maintained dictionary; it
is needed only to regenerate this file, not at run time:

    pip install --target /tmp/pyp pypinyin && PYTHONPATH=/tmp/pyp python support/vocab/make_pinyin.py
"""

from __future__ import annotations

import csv
from pathlib import Path

from pypinyin import Style, lazy_pinyin

# surnames whose reading differs from the character's most common one
SURNAME_READINGS = {"曾": "ZENG", "单": "SHAN", "解": "XIE", "仇": "QIU", "区": "OU", "查": "ZHA", "朴": "PIAO",
                    "盖": "GE", "乐": "YUE", "尉": "YU", "覃": "QIN", "缪": "MIAO", "翟": "ZHAI", "召": "SHAO",
                    "繁": "PO", "种": "CHONG", "沈": "SHEN", "长": "CHANG", "重": "CHONG", "员": "YUN"}


def gb2312_characters() -> list[str]:
    characters = []
    for high in range(0xB0, 0xF8):
        for low in range(0xA1, 0xFF):
            try:
                characters.append(bytes([high, low]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return characters


def main() -> None:
    out = Path(__file__).resolve().parents[2] / "conf" / "vocab" / "pinyin.csv"
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["character", "pinyin", "surname_pinyin"])
        for character in gb2312_characters():
            reading = lazy_pinyin(character, style=Style.NORMAL, v_to_u=False)[0].upper().replace("Ü", "V")
            writer.writerow([character, reading, SURNAME_READINGS.get(character, reading)])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
