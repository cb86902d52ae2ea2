#!/usr/bin/env python3
"""Synthetic data for the search benchmark (docs/benchmarks.md): Patients with
names, identifiers, phones and addresses, and Observations (vital signs and
labs, LOINC-coded, UCUM quantities, dates 2015-2024) referring to them.

Deterministic (seeded). Writes one JSON resource per line:
    generate.py PATIENTS OBS_PER_PATIENT OUT.ndjson
The loader (load.py) PUTs them with their ids, so queries can name them."""
import json
import random
import sys

FAMILIES = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
            "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
            "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
            "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen",
            "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams",
            "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
            "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
            "Chalmers", "O'Brien", "Dubois", "Lefèvre", "Rossi", "Russo", "Ferrari", "Esposito"]
GIVEN = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William",
         "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
         "Charles", "Karen", "Chloé", "Zoë", "Émile", "Anna", "Peter", "Lena", "Jan", "Sofia"]
CITIES = ["Springfield", "Riverside", "Franklin", "Greenville", "Bristol", "Clinton", "Fairview",
          "Salem", "Madison", "Georgetown", "Arlington", "Ashland", "Dover", "Oxford", "Jackson"]
CODES = [  # (LOINC, display, unit, low, high, category)
    ("29463-7", "Body weight", "kg", 40, 120, "vital-signs"),
    ("8302-2", "Body height", "cm", 140, 200, "vital-signs"),
    ("8867-4", "Heart rate", "/min", 50, 110, "vital-signs"),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 170, "vital-signs"),
    ("8310-5", "Body temperature", "Cel", 36, 39, "vital-signs"),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 60, 200, "laboratory"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10, 18, "laboratory"),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120, 300, "laboratory"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4, 10, "laboratory"),
    ("39156-5", "Body mass index", "kg/m2", 16, 40, "vital-signs"),
]
MRN = "http://hospital.example.org/mrn"


def main():
    patients, per_patient, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rnd = random.Random(20261201)
    with open(out, "w", encoding="utf-8") as f:
        for i in range(patients):
            pid = f"p{i}"
            family = rnd.choice(FAMILIES) + ("" if rnd.random() < 0.7 else rnd.choice(["son", "ley", "ton", "er"]))
            p = {"resourceType": "Patient", "id": pid, "active": True,
                 "identifier": [{"system": MRN, "value": f"MRN{i:07d}"}],
                 "name": [{"use": "official", "family": family,
                           "given": [rnd.choice(GIVEN), rnd.choice(GIVEN)]}],
                 "telecom": [{"system": "phone", "value": f"555-{rnd.randrange(10**7):07d}", "use": "home"}],
                 "gender": rnd.choice(["male", "female"]),
                 "birthDate": f"{rnd.randrange(1930, 2020)}-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}",
                 "address": [{"line": [f"{rnd.randrange(1, 9999)} Main St"], "city": rnd.choice(CITIES),
                              "postalCode": f"{rnd.randrange(10000, 99999)}", "country": "US"}]}
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
            for j in range(per_patient):
                code, display, unit, lo, hi, cat = rnd.choice(CODES)
                o = {"resourceType": "Observation", "id": f"o{i}-{j}", "status": "final",
                     "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": cat}]}],
                     "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
                     "subject": {"reference": f"Patient/{pid}"},
                     "effectiveDateTime": f"{rnd.randrange(2015, 2025)}-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:00Z",
                     "valueQuantity": {"value": round(rnd.uniform(lo, hi), 1), "unit": unit,
                                       "system": "http://unitsofmeasure.org", "code": unit}}
                f.write(json.dumps(o, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
