"""People of the synthetic region and their registrations at hospitals, with identity noise.

Everything here is vectorized numpy over one block of persons; a block's draws depend only on
(seed, block), so blocks can be generated in any order or in parallel with identical bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# surnames and given-name characters with their pinyin (for the hospital that registers in pinyin)
SURNAMES = {"王": "Wang", "李": "Li", "张": "Zhang", "刘": "Liu", "陈": "Chen", "杨": "Yang", "黄": "Huang",
            "赵": "Zhao", "吴": "Wu", "周": "Zhou", "徐": "Xu", "孙": "Sun", "马": "Ma", "朱": "Zhu", "胡": "Hu",
            "郭": "Guo", "何": "He", "高": "Gao", "林": "Lin", "罗": "Luo", "郑": "Zheng", "梁": "Liang",
            "谢": "Xie", "宋": "Song", "唐": "Tang", "许": "Xu", "韩": "Han", "冯": "Feng", "邓": "Deng"}
GIVEN = {"伟": "wei", "芳": "fang", "娜": "na", "秀": "xiu", "英": "ying", "敏": "min", "静": "jing", "丽": "li",
         "强": "qiang", "磊": "lei", "军": "jun", "洋": "yang", "勇": "yong", "艳": "yan", "杰": "jie", "娟": "juan",
         "涛": "tao", "明": "ming", "超": "chao", "兰": "lan", "霞": "xia", "平": "ping", "刚": "gang", "华": "hua",
         "玉": "yu", "萍": "ping", "红": "hong", "玲": "ling", "燕": "yan", "斌": "bin", "宇": "yu", "浩": "hao",
         "凯": "kai", "鹏": "peng", "辉": "hui", "建": "jian", "国": "guo", "志": "zhi", "文": "wen", "海": "hai"}
# homophones: the typist's slip that a name-matcher on characters alone would miss
HOMOPHONES = {"伟": "玮", "芳": "方", "娜": "纳", "静": "晶", "丽": "莉", "强": "蔷", "磊": "垒", "军": "君",
              "洋": "阳", "勇": "永", "艳": "燕", "杰": "洁", "娟": "鹃", "涛": "韬", "明": "铭", "超": "朝",
              "兰": "岚", "霞": "夏", "平": "萍", "刚": "钢", "华": "桦", "玉": "钰", "红": "虹", "玲": "铃",
              "斌": "彬", "宇": "雨", "浩": "皓", "凯": "恺", "鹏": "朋", "辉": "晖", "建": "健", "国": "帼",
              "志": "智", "文": "雯", "海": "凯", "萍": "平", "燕": "艳", "秀": "绣", "英": "瑛", "敏": "珉"}
DISTRICTS = [("120101", "和平区"), ("120102", "河东区"), ("120103", "河西区"), ("120104", "南开区"),
             ("120105", "河北区"), ("120106", "红桥区"), ("120111", "西青区"), ("120112", "津南区")]
ROADS = ["解放路", "人民路", "建设路", "中山路", "胜利街", "友谊路", "南京路", "卫津路", "复康路", "黄河道"]
ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
ID_CHECK = np.array(list("10X98765432"))
COMORBIDITIES = ("diabetes", "hypertension", "heart_failure", "ckd", "copd", "cancer")
NOISE_KINDS = ("name_typo", "id_missing", "id_mistyped", "dob_swap", "phone_changed")


def check_character(body17: str) -> str:
    return ID_CHECK[sum(int(d) * w for d, w in zip(body17, ID_WEIGHTS, strict=True)) % 11]


def valid_national_id(value: str) -> bool:
    """18 characters, 17 digits then the ISO 7064 MOD 11-2 check character (independent of numpy use)."""
    value = str(value).strip().upper()
    return len(value) == 18 and value[:17].isdigit() and check_character(value[:17]) == value[17]


def national_ids(rng: np.random.Generator, region: np.ndarray, birth: pd.Series, sex: np.ndarray) -> np.ndarray:
    seq = rng.integers(0, 500, len(sex)) * 2 + np.where(sex == "M", 1, 0)
    body = (region.astype(object) + birth.dt.strftime("%Y%m%d").to_numpy().astype(object)
            + np.char.zfill(seq.astype(str), 3).astype(object))
    digits = np.array([list(b) for b in body], dtype=int).reshape(len(body), 17)
    return (body + ID_CHECK[(digits * ID_WEIGHTS).sum(axis=1) % 11]).astype(str)


def pinyin(name: str) -> str:
    """王小明 -> WANG XIAOMING (surname upper case, as registration desks type it)."""
    surname, given = name[0], name[1:]
    return f"{SURNAMES.get(surname, surname).upper()} {''.join(GIVEN.get(c, c) for c in given).upper()}"


def draw_persons(rng: np.random.Generator, first_id: int, n: int, hospitals: int, end: pd.Timestamp,
                 case_mix: np.ndarray, share_multi: float, share_hard_negative: float) -> pd.DataFrame:
    """n persons (plus 1% hard negatives: twins and namesakes of some of them)."""
    age = rng.integers(18, 96, n)
    birth = pd.Series(end - pd.to_timedelta(age * 365 + rng.integers(0, 365, n), unit="D")).dt.normalize()
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    home = rng.integers(0, hospitals, n)
    older = (age - 40).clip(0) / 50
    risk = case_mix[home]
    flags = {
        "diabetes": rng.random(n) < (0.06 + 0.14 * older) * risk,
        "hypertension": rng.random(n) < (0.10 + 0.30 * older) * risk,
        "heart_failure": rng.random(n) < (0.02 + 0.10 * older) * risk,
        "copd": rng.random(n) < (0.02 + 0.06 * older) * risk,
        "cancer": rng.random(n) < (0.01 + 0.05 * older) * risk,
    }
    flags["ckd"] = rng.random(n) < (0.03 + 0.08 * older + 0.06 * flags["diabetes"]) * risk
    surnames, given = np.array(list(SURNAMES)), np.array(list(GIVEN))
    names = (surnames[rng.integers(0, len(surnames), n)] + given[rng.integers(0, len(given), n)]
             + np.where(rng.random(n) < 0.7, given[rng.integers(0, len(given), n)], ""))
    district = rng.integers(0, len(DISTRICTS), n)
    region = np.array([d[0] for d in DISTRICTS])[district]
    address = (np.array(["天津市" + d[1] for d in DISTRICTS])[district]
               + np.array(ROADS)[rng.integers(0, len(ROADS), n)] + rng.integers(1, 400, n).astype(str) + "号")
    second = np.where((rng.random(n) < share_multi) & (hospitals > 1),
                      (home + rng.integers(1, max(hospitals, 2), n)) % max(hospitals, 1), -1)
    persons = pd.DataFrame({
        "person_id": first_id + np.arange(n), "name": names, "sex": sex, "birth_date": birth,
        "national_id": national_ids(rng, region, birth, sex), "region": region,
        "phone": np.char.add("1", rng.integers(3_000_000_000, 9_999_999_999, n).astype(str)),
        "address": address, "age": age, "home": home, "second": second, "hard_negative_of": -1,
        "hard_negative_kind": "", **flags,
    })
    return pd.concat([persons, _hard_negatives(rng, persons, share_hard_negative, first_id + n)], ignore_index=True)


def _hard_negatives(rng: np.random.Generator, persons: pd.DataFrame, share: float, next_id: int) -> pd.DataFrame:
    """Twins (same birth date, address, surname, phone area) and namesakes (same name, same birth year):
    different people that a linker must keep apart. They register at their anchor's home hospital."""
    anchors = persons[rng.random(len(persons)) < share].copy()
    if anchors.empty:
        return anchors
    twin = rng.random(len(anchors)) < 0.5
    other = anchors.copy()
    other["person_id"] = next_id + np.arange(len(anchors))
    other["hard_negative_of"] = anchors["person_id"].to_numpy()
    other["hard_negative_kind"] = np.where(twin, "twin", "namesake")
    given = np.array(list(GIVEN))
    twin_names = anchors["name"].str[0] + given[rng.integers(0, len(given), len(anchors))] + \
        given[rng.integers(0, len(given), len(anchors))]
    other["name"] = np.where(twin, twin_names, anchors["name"])
    other["sex"] = np.where(rng.random(len(anchors)) < 0.5, "M", "F")
    shift = pd.to_timedelta(rng.integers(1, 360, len(anchors)), unit="D")
    other["birth_date"] = np.where(twin, anchors["birth_date"],
                                   anchors["birth_date"].dt.to_period("Y").dt.start_time + shift)
    other["birth_date"] = pd.to_datetime(other["birth_date"])
    other["address"] = np.where(twin, anchors["address"], other["address"].sample(frac=1, random_state=1).to_numpy())
    other["national_id"] = national_ids(rng, other["region"].to_numpy(), other["birth_date"], other["sex"].to_numpy())
    other["phone"] = np.char.add("1", rng.integers(3_000_000_000, 9_999_999_999, len(anchors)).astype(str))
    other["second"] = -1
    return other


def registrations(rng: np.random.Generator, persons: pd.DataFrame, noise_rate: float) -> pd.DataFrame:
    """One patient record per (person, hospital). Records at a person's second hospital carry
    identity noise, each kind independently at `noise_rate`; the truth keeps which kinds."""
    home = persons.assign(hospital=persons["home"], primary=True)
    second = persons[persons["second"] >= 0].assign(hospital=lambda d: d["second"], primary=False)
    records = pd.concat([home, second], ignore_index=True).sort_values(["person_id", "hospital"], kind="stable")
    records = records.reset_index(drop=True)
    n = len(records)
    noisy = ~records["primary"].to_numpy()
    kinds = {kind: noisy & (rng.random(n) < noise_rate) for kind in NOISE_KINDS}
    slip = rng.random(n) < 0.4  # a typing slip (given-name characters transposed) rather than a homophone
    typo = [_transposed(name) if s else _homophone(name) for name, s in zip(records["name"], slip, strict=True)]
    records["name"] = np.where(kinds["name_typo"], typo, records["name"])
    mistyped = records["national_id"].map(_mistype_digit)
    records["national_id"] = np.where(kinds["id_missing"], "",
                                      np.where(kinds["id_mistyped"], mistyped, records["national_id"]))
    # only a day of 12 or less can pass for a month: draw among those so the kind still hits noise_rate
    swappable = ((records["birth_date"].dt.day <= 12)
                 & (records["birth_date"].dt.day != records["birth_date"].dt.month)).to_numpy()
    share = max(swappable[noisy].mean(), 1e-9) if noisy.any() else 1.0
    kinds["dob_swap"] = noisy & swappable & (rng.random(n) < min(1.0, noise_rate / share))
    swapped = pd.to_datetime(dict(year=records["birth_date"].dt.year, month=records["birth_date"].dt.day.clip(1, 12),
                                  day=records["birth_date"].dt.month))
    records["birth_date"] = records["birth_date"].where(~kinds["dob_swap"], swapped)
    new_phone = np.char.add("1", rng.integers(3_000_000_000, 9_999_999_999, n).astype(str))
    records["phone"] = np.where(kinds["phone_changed"], new_phone, records["phone"])
    records["noise"] = [",".join(k for k in NOISE_KINDS if kinds[k][i]) for i in range(n)] if n else []
    return records


def _transposed(name: str) -> str:
    """王小明 -> 王明小; a two-character name falls back to a homophone."""
    if len(name) == 3 and name[1] != name[2]:
        return name[0] + name[2] + name[1]
    return _homophone(name)


def _homophone(name: str) -> str:
    for i in range(len(name) - 1, 0, -1):
        if name[i] in HOMOPHONES:
            return name[:i] + HOMOPHONES[name[i]] + name[i + 1:]
    return name


def _mistype_digit(national_id: str) -> str:
    """One digit of the date-of-birth block changed: the check character then no longer matches."""
    position = 12
    digit = str((int(national_id[position]) + 3) % 10)
    return national_id[:position] + digit + national_id[position + 1:]
