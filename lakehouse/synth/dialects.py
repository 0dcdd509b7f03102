"""Vendor dialects: how each hospital's exports differ. Data, not code.

Each dialect names its columns, encoding, delimiter, date formats, local codes and units. The
shipped source contracts under conf/sources/ describe the same dumps from the reader's side; a test
checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabCode:
    local_code: str
    local_name: str
    unit: str


@dataclass(frozen=True)
class Dialect:
    name: str
    encoding: str            # Python codec used to write
    delimiter: str
    timestamp_format: str    # strftime
    date_format: str         # strftime
    columns: dict[str, dict[str, str]]   # entity -> canonical field -> the vendor's column name
    encounter_types: dict[str, str]      # canonical type -> local value
    labs: dict[str, LabCode]             # canonical lab (glucose, creatinine, hba1c) -> local code
    icd_style: str                       # "dot" E11.9, "nodot" E119, "extension" E11.900
    sex_values: tuple[str, str]          # (male, female)


_EN = {
    "patient": {"mrn": "mrn", "name": "name", "national_id": "id_number", "sex": "sex",
                "birth_date": "birth_date", "phone": "phone", "address": "address", "updated_at": "updated_at"},
    "encounter": {"encounter_id": "visit_id", "mrn": "mrn", "encounter_type": "visit_type",
                  "department": "dept", "admit_time": "admit_time", "discharge_time": "discharge_time",
                  "discharge_disposition": "disposition", "updated_at": "updated_at"},
    "diagnosis": {"diagnosis_id": "dx_id", "encounter_id": "visit_id", "mrn": "mrn", "icd_code": "icd10",
                  "diagnosis_name": "dx_name", "diagnosis_time": "dx_time", "updated_at": "updated_at"},
    "lab_result": {"result_id": "result_id", "encounter_id": "visit_id", "mrn": "mrn", "test_code": "test_code",
                   "test_name": "test_name", "value": "result", "unit": "unit", "result_time": "report_time",
                   "updated_at": "updated_at"},
}

_ZH = {
    "patient": {"mrn": "病案号", "name": "姓名", "national_id": "身份证号", "sex": "性别", "birth_date": "出生日期",
                "phone": "联系电话", "address": "住址", "updated_at": "更新时间"},
    "encounter": {"encounter_id": "就诊流水号", "mrn": "病案号", "encounter_type": "就诊类型", "department": "科室",
                  "admit_time": "入院时间", "discharge_time": "出院时间", "discharge_disposition": "离院方式",
                  "updated_at": "更新时间"},
    "diagnosis": {"diagnosis_id": "诊断序号", "encounter_id": "就诊流水号", "mrn": "病案号", "icd_code": "诊断编码",
                  "diagnosis_name": "诊断名称", "diagnosis_time": "诊断时间", "updated_at": "更新时间"},
    "lab_result": {"result_id": "检验单号", "encounter_id": "就诊流水号", "mrn": "病案号", "test_code": "项目代码",
                   "test_name": "项目名称", "value": "结果", "unit": "单位", "result_time": "报告时间",
                   "updated_at": "更新时间"},
}

_ABBR = {
    "patient": {"mrn": "PAT_NO", "name": "PAT_NM", "national_id": "CERT_NO", "sex": "GEND_CD",
                "birth_date": "BRDY", "phone": "TEL", "address": "ADDR", "updated_at": "UPD_TS"},
    "encounter": {"encounter_id": "ENC_NO", "mrn": "PAT_NO", "encounter_type": "ENC_TP", "department": "DEPT_NM",
                  "admit_time": "ADM_TS", "discharge_time": "DSCH_TS", "discharge_disposition": "DSCH_WAY",
                  "updated_at": "UPD_TS"},
    "diagnosis": {"diagnosis_id": "DIAG_SN", "encounter_id": "ENC_NO", "mrn": "PAT_NO", "icd_code": "DIAG_CD",
                  "diagnosis_name": "DIAG_NM", "diagnosis_time": "DIAG_TS", "updated_at": "UPD_TS"},
    "lab_result": {"result_id": "RPT_SN", "encounter_id": "ENC_NO", "mrn": "PAT_NO", "test_code": "ITEM_CD",
                   "test_name": "ITEM_NM", "value": "RSLT_VAL", "unit": "RSLT_UNIT", "result_time": "RPT_TS",
                   "updated_at": "UPD_TS"},
}

DIALECTS: dict[str, Dialect] = {
    "standard_csv": Dialect(
        name="standard_csv", encoding="utf-8", delimiter=",",
        timestamp_format="%Y-%m-%d %H:%M:%S", date_format="%Y-%m-%d", columns=_EN,
        encounter_types={"outpatient": "outpatient", "inpatient": "inpatient", "emergency": "emergency"},
        labs={"glucose": LabCode("GLU", "葡萄糖", "mmol/L"),
              "creatinine": LabCode("CREA", "肌酐", "umol/L"),
              "hba1c": LabCode("HBA1C", "糖化血红蛋白", "%")},
        icd_style="dot", sex_values=("M", "F"),
    ),
    "gb18030_tab": Dialect(
        name="gb18030_tab", encoding="gb18030", delimiter="\t",
        timestamp_format="%Y/%m/%d %H:%M", date_format="%Y/%m/%d", columns=_ZH,
        encounter_types={"outpatient": "门诊", "inpatient": "住院", "emergency": "急诊"},
        labs={"glucose": LabCode("0101", "血糖", "mg/dL"),
              "creatinine": LabCode("0205", "肌酐(酶法)", "mg/dL"),
              "hba1c": LabCode("0309", "糖化血红蛋白A1c", "%")},
        icd_style="nodot", sex_values=("男", "女"),
    ),
    "bom_pipe": Dialect(
        name="bom_pipe", encoding="utf-8-sig", delimiter="|",
        timestamp_format="%Y%m%d%H%M%S", date_format="%Y%m%d", columns=_ABBR,
        encounter_types={"outpatient": "O", "inpatient": "I", "emergency": "E"},
        labs={"glucose": LabCode("L-GLU", "空腹血糖", "mmol/L"),
              "creatinine": LabCode("L-CR", "血肌酐", "umol/L"),
              "hba1c": LabCode("L-A1C", "HbA1c", "%")},
        icd_style="extension", sex_values=("1", "2"),
    ),
}

# hospital i (0-based) uses the i-th dialect, cycling
DIALECT_ORDER = ("standard_csv", "gb18030_tab", "bom_pipe")


def hospital_id(index: int) -> str:
    return f"H{index + 1:02d}"


def dialect_for(index: int) -> Dialect:
    return DIALECTS[DIALECT_ORDER[index % len(DIALECT_ORDER)]]
