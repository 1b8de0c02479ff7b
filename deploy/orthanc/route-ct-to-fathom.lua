-- Send every stable CT series to Fathom's nodule worker (modality "fathom" of orthanc.json).
-- Fathom's own results come back as SEG and SR series and are not routed again.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    SendToModality(seriesId, 'fathom')
  end
end
