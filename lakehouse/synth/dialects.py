"""Vendor dialects: how each hospital's exports differ. Data, not code.

A dialect names its file format per entity, columns, encoding, delimiter, compression, timestamp
style, local codes and units. Hospital i uses DIALECT_ORDER[i % 5]. The shipped source contracts
under conf/sources/ describe the same dumps from the reader's side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lakehouse.catalog import BRONZE_COLUMNS, ENTITIES

# canonical (bronze) fields of each entity, in order: owned by the catalog
FIELDS = BRONZE_COLUMNS
TIME_FIELDS = {
    "patient": "updated_at",
    "encounter": "admit_time",
    "diagnosis": "diagnosis_time",
    "procedure": "procedure_time",
    "lab_result": "result_time",
    "vital_sign": "measured_at",
    "medication": "start_time",
    "imaging_report": "report_time",
    "note": "note_time",
}
ID_FIELDS = {
    "patient": "mrn",
    "encounter": "encounter_id",
    "diagnosis": "diagnosis_id",
    "procedure": "procedure_id",
    "lab_result": "result_id",
    "vital_sign": "vital_id",
    "medication": "order_id",
    "imaging_report": "report_id",
    "note": "note_id",
}


@dataclass(frozen=True)
class Local:
    """A local code with its name and unit, and the factor from the canonical unit to the local one."""

    code: str
    name: str
    unit: str
    factor_from_canonical: float = 1.0


@dataclass(frozen=True)
class Dialect:
    name: str
    formats: dict[str, str]  # entity -> csv | hl7v2 | fhir_ndjson
    encoding: str = "utf-8"  # Python codec of the CSV files
    delimiter: str = ","
    gzip: bool = False
    timestamp: str = "%Y-%m-%d %H:%M:%S"  # strftime, or "epoch_ms", or "iso"
    date: str = "%Y-%m-%d"
    column_style: str = "en"  # en | zh | abbr
    sex: tuple[str, str] = ("M", "F")
    encounter_types: dict[str, str] = field(
        default_factory=lambda: {"outpatient": "outpatient", "inpatient": "inpatient", "emergency": "emergency"}
    )
    status: tuple[str, str] = ("final", "cancelled")
    icd_style: str = "dot"  # dot E11.9 | nodot E119 | extension E11.900
    pinyin_names: bool = False
    labs: dict[str, Local] = field(default_factory=dict)
    vitals: dict[str, Local] = field(default_factory=dict)
    drugs: dict[str, Local] = field(default_factory=dict)

    def extension(self, entity: str) -> str:
        fmt = self.formats[entity]
        if fmt == "hl7v2":
            return "hl7"
        if fmt == "fhir_ndjson":
            return "ndjson"
        base = "tsv" if self.delimiter == "\t" else "csv"
        return f"{base}.gz" if self.gzip else base


def _csv_everywhere() -> dict[str, str]:
    return dict.fromkeys(ENTITIES, "csv")


_LABS_STANDARD = {
    "glucose": Local("GLU", "葡萄糖", "mmol/L"),
    "creatinine": Local("CREA", "肌酐", "umol/L"),
    "hba1c": Local("HBA1C", "糖化血红蛋白", "%"),
    "albumin": Local("ALB", "白蛋白", "g/L"),
    "hemoglobin": Local("HGB", "血红蛋白", "g/L"),
    "sodium": Local("NA", "钠", "mmol/L"),
    "potassium": Local("K", "钾", "mmol/L"),
}
_VITALS_STANDARD = {
    "temperature": Local("T", "体温", "℃"),
    "heart_rate": Local("P", "脉搏", "次/分"),
    "sbp": Local("SBP", "收缩压", "mmHg"),
    "dbp": Local("DBP", "舒张压", "mmHg"),
    "spo2": Local("SPO2", "血氧饱和度", "%"),
    "resp_rate": Local("R", "呼吸", "次/分"),
}
_DRUGS_STANDARD = {
    "metformin": Local("D001", "二甲双胍片", ""),
    "insulin": Local("D002", "甘精胰岛素注射液", ""),
    "furosemide": Local("D003", "呋塞米片", ""),
    "amlodipine": Local("D004", "氨氯地平片", ""),
    "ceftriaxone": Local("D005", "注射用头孢曲松钠", ""),
    "aspirin": Local("D006", "阿司匹林肠溶片", ""),
}


def _prefixed(table: dict[str, Local], prefix: str) -> dict[str, Local]:
    return {k: Local(prefix + v.code, v.name, v.unit, v.factor_from_canonical) for k, v in table.items()}


DIALECTS: dict[str, Dialect] = {
    "standard_csv": Dialect(
        name="standard_csv",
        formats=_csv_everywhere(),
        labs=_LABS_STANDARD,
        vitals=_VITALS_STANDARD,
        drugs=_DRUGS_STANDARD,
    ),
    "gb18030_tab": Dialect(
        name="gb18030_tab",
        formats=_csv_everywhere(),
        encoding="gb18030",
        delimiter="\t",
        timestamp="%Y/%m/%d %H:%M",
        date="%Y/%m/%d",
        column_style="zh",
        sex=("男", "女"),
        encounter_types={"outpatient": "门诊", "inpatient": "住院", "emergency": "急诊"},
        status=("正常", "作废"),
        icd_style="nodot",
        labs={
            "glucose": Local("0101", "血糖", "mg/dL", 18.016),
            "creatinine": Local("0205", "肌酐(酶法)", "mg/dL", 1 / 88.42),
            "hba1c": Local("0309", "糖化血红蛋白A1c", "%"),
            "albumin": Local("0211", "白蛋白", "g/dL", 0.1),
            "hemoglobin": Local("0401", "血红蛋白", "g/dL", 0.1),
            "sodium": Local("0501", "钠离子", "mmol/L"),
            "potassium": Local("0502", "钾离子", "mmol/L"),
        },
        vitals=_prefixed(_VITALS_STANDARD, "HL-"),
        drugs=_prefixed(_DRUGS_STANDARD, "YP"),
    ),
    "bom_pipe": Dialect(
        name="bom_pipe",
        formats=_csv_everywhere(),
        encoding="utf-8-sig",
        delimiter="|",
        timestamp="%Y%m%d%H%M%S",
        date="%Y%m%d",
        column_style="abbr",
        sex=("1", "2"),
        encounter_types={"outpatient": "O", "inpatient": "I", "emergency": "E"},
        status=("N", "C"),
        icd_style="extension",
        labs={
            "glucose": Local("L-GLU", "空腹血糖", "mmol/L"),
            "creatinine": Local("L-CR", "血肌酐", "μmol/L"),
            "hba1c": Local("L-A1C", "HbA1c", "%"),
            "albumin": Local("L-ALB", "血清白蛋白", "g/L"),
            "hemoglobin": Local("L-HB", "血红蛋白测定", "g/L"),
            "sodium": Local("L-NA", "血钠", "mmol/L"),
            "potassium": Local("L-K", "血钾", "mmol/L"),
        },
        vitals=_prefixed(_VITALS_STANDARD, "V"),
        drugs=_prefixed(_DRUGS_STANDARD, "X"),
    ),
    "gzip_epoch_hl7": Dialect(
        name="gzip_epoch_hl7",
        formats={**_csv_everywhere(), "lab_result": "hl7v2"},
        gzip=True,
        timestamp="epoch_ms",
        date="%Y-%m-%d",
        sex=("M", "F"),
        labs={
            "glucose": Local("GLU", "Glu^葡萄糖", "mg/dL", 18.016),  # "^" and "&" in names: HL7 escapes
            "creatinine": Local("CRE", "Cr&肌酐", "mg/dL", 1 / 88.42),
            "hba1c": Local("A1C", "HbA1c", "%"),
            "albumin": Local("ALB", "白蛋白", "g/L"),
            "hemoglobin": Local("HB", "血红蛋白", "g/L"),
            "sodium": Local("NA", "Na+", "mmol/L"),
            "potassium": Local("K", "K+", "mmol/L"),
        },
        vitals=_prefixed(_VITALS_STANDARD, "N"),
        drugs=_prefixed(_DRUGS_STANDARD, "M"),
    ),
    "fhir_ndjson": Dialect(
        name="fhir_ndjson",
        formats=dict.fromkeys(ENTITIES, "fhir_ndjson"),
        timestamp="iso",
        date="%Y-%m-%d",
        sex=("male", "female"),
        pinyin_names=True,
        status=("final", "entered-in-error"),
        labs={
            k: Local(code, v.name, v.unit)
            for (k, v), code in zip(
                _LABS_STANDARD.items(),
                ("14749-6", "14682-9", "4548-4", "1751-7", "718-7", "2951-2", "2823-3"),
                strict=True,
            )
        },
        vitals={
            k: Local(code, v.name, unit)
            for (k, v), code, unit in zip(
                _VITALS_STANDARD.items(),
                ("8310-5", "8867-4", "8480-6", "8462-4", "59408-5", "9279-1"),
                ("Cel", "/min", "mm[Hg]", "mm[Hg]", "%", "/min"),
                strict=True,
            )
        },
        drugs=_prefixed(_DRUGS_STANDARD, "RX"),
    ),
}
DIALECT_ORDER = ("standard_csv", "gb18030_tab", "bom_pipe", "gzip_epoch_hl7", "fhir_ndjson")

_ZH = {
    "mrn": "病案号",
    "name": "姓名",
    "national_id": "身份证号",
    "sex": "性别",
    "birth_date": "出生日期",
    "phone": "联系电话",
    "address": "住址",
    "updated_at": "更新时间",
    "encounter_id": "就诊流水号",
    "encounter_type": "就诊类型",
    "admission_type": "入院方式",
    "department": "科室",
    "ward": "病区",
    "bed": "床号",
    "admit_time": "入院时间",
    "discharge_time": "出院时间",
    "discharge_disposition": "离院方式",
    "status": "状态",
    "diagnosis_id": "诊断序号",
    "icd_code": "诊断编码",
    "diagnosis_name": "诊断名称",
    "diagnosis_time": "诊断时间",
    "procedure_id": "手术序号",
    "procedure_code": "手术编码",
    "procedure_name": "手术名称",
    "procedure_time": "手术时间",
    "result_id": "检验单号",
    "test_code": "项目代码",
    "test_name": "项目名称",
    "value": "结果",
    "unit": "单位",
    "reference_range": "参考范围",
    "abnormal_flag": "异常标志",
    "result_time": "报告时间",
    "vital_id": "记录号",
    "measure_code": "体征代码",
    "measure_name": "体征名称",
    "measured_at": "测量时间",
    "order_id": "医嘱号",
    "drug_code": "药品编码",
    "drug_name": "药品名称",
    "dose": "剂量",
    "dose_unit": "剂量单位",
    "route": "给药途径",
    "frequency": "频次",
    "start_time": "开始时间",
    "end_time": "停止时间",
    "report_id": "报告号",
    "modality": "检查类型",
    "body_part": "检查部位",
    "report_text": "报告内容",
    "report_time": "报告时间",
    "note_id": "文书号",
    "note_type": "文书类型",
    "note_text": "文书内容",
    "note_time": "书写时间",
}
_ABBR = {
    "mrn": "PAT_NO",
    "name": "PAT_NM",
    "national_id": "CERT_NO",
    "sex": "GEND_CD",
    "birth_date": "BRDY",
    "phone": "TEL",
    "address": "ADDR",
    "updated_at": "UPD_TS",
    "encounter_id": "ENC_NO",
    "encounter_type": "ENC_TP",
    "admission_type": "ADM_WAY",
    "department": "DEPT_NM",
    "ward": "WARD_NM",
    "bed": "BED_NO",
    "admit_time": "ADM_TS",
    "discharge_time": "DSCH_TS",
    "discharge_disposition": "DSCH_WAY",
    "status": "STAT_CD",
    "diagnosis_id": "DIAG_SN",
    "icd_code": "DIAG_CD",
    "diagnosis_name": "DIAG_NM",
    "diagnosis_time": "DIAG_TS",
    "procedure_id": "OPER_SN",
    "procedure_code": "OPER_CD",
    "procedure_name": "OPER_NM",
    "procedure_time": "OPER_TS",
    "result_id": "RPT_SN",
    "test_code": "ITEM_CD",
    "test_name": "ITEM_NM",
    "value": "RSLT_VAL",
    "unit": "RSLT_UNIT",
    "reference_range": "REF_RNG",
    "abnormal_flag": "ABN_FLG",
    "result_time": "RPT_TS",
    "vital_id": "VS_SN",
    "measure_code": "VS_CD",
    "measure_name": "VS_NM",
    "measured_at": "MEAS_TS",
    "order_id": "ORD_NO",
    "drug_code": "DRUG_CD",
    "drug_name": "DRUG_NM",
    "dose": "DOSE",
    "dose_unit": "DOSE_UNIT",
    "route": "ROUTE",
    "frequency": "FREQ",
    "start_time": "BGN_TS",
    "end_time": "END_TS",
    "report_id": "EXAM_SN",
    "modality": "MODALITY",
    "body_part": "BODY_PART",
    "report_text": "RPT_TXT",
    "report_time": "EXAM_TS",
    "note_id": "DOC_SN",
    "note_type": "DOC_TP",
    "note_text": "DOC_TXT",
    "note_time": "DOC_TS",
}
_EN_RENAMES = {
    "national_id": "id_number",
    "encounter_id": "visit_id",
    "encounter_type": "visit_type",
    "department": "dept",
    "discharge_disposition": "disposition",
    "diagnosis_id": "dx_id",
    "icd_code": "icd10",
    "diagnosis_name": "dx_name",
    "diagnosis_time": "dx_time",
    "value": "result",
    "result_time": "report_time",
}


def column_names(dialect: Dialect, entity: str) -> dict[str, str]:
    """canonical field -> the vendor's column name, for CSV dialects."""
    if dialect.column_style == "zh":
        return {f: _ZH[f] for f in FIELDS[entity]}
    if dialect.column_style == "abbr":
        return {f: _ABBR[f] for f in FIELDS[entity]}
    return {f: _EN_RENAMES.get(f, f) for f in FIELDS[entity]}


def hospital_id(index: int) -> str:
    return f"H{index + 1:02d}"


def dialect_for(index: int) -> Dialect:
    return DIALECTS[DIALECT_ORDER[index % len(DIALECT_ORDER)]]
