namespace PortAzure.Redis;

/// <summary>Field names of a delivery's state record (a hash at <see cref="RedisKeys.Delivery"/>).</summary>
public static class DeliveryRecord
{
    public const string State = "state";
    // Shared with the stream entry's fields, so a record rebuilds the entry for a retry.
    public const string Org = DeliveryEntry.Fields.Org;
    public const string Webhook = DeliveryEntry.Fields.Webhook;
    public const string RunId = DeliveryEntry.Fields.RunId;
    public const string IdempotencyKey = DeliveryEntry.Fields.IdempotencyKey;
    public const string ReceivedAt = DeliveryEntry.Fields.ReceivedAt;
    public const string UpdatedAt = "updatedAt";
    public const string DeliveredAt = "deliveredAt";
    public const string Attempts = "attempts";

    /// <summary>
    /// Of <see cref="Attempts"/>, the tries that spent nothing of the attempt budget (a paused target's probe Azure refused,
    /// a 429): absent for none. Reset with the round.
    /// </summary>
    public const string FreeAttempts = "freeAttempts";
    public const string LastStatus = "lastStatus";
    public const string LastError = "lastError";
    public const string NextAttemptAt = "nextAttemptAt";
    public const string TraceParent = DeliveryEntry.Fields.TraceParent;
    public const string TraceState = DeliveryEntry.Fields.TraceState;
    public const string StreamId = "streamId";
    public const string Claims = "claims";
    public const string Hint = "hint";
    public const string Reason = "reason";
    public const string DeadLetteredAt = "deadLetteredAt";
    public const string Replays = "replays";

    /// <summary>"1" once a try's answer was lost (a timeout, a dropped connection, a gateway's 502/504): Azure may have the run.</summary>
    public const string AnswerLost = "answerLost";

    /// <summary>
    /// The type of what stood at the record's key when an attempt began (not a hash): the delivery goes to the dead
    /// letters unposted. Removed by a replay.
    /// </summary>
    public const string Damaged = "damaged";

    /// <summary>Start of the current delivery cycle (receipt, or the last replay): the retry age counts from it.</summary>
    public const string Since = "since";

    /// <summary>
    /// The report stream's entry id of the delivery's newest Port report, while that report is written and not yet sent or
    /// given up: the finish that writes a report sets it (a replay's report replaces a dead letter's), a hand-back moves it
    /// to the new entry, and the reporter that ends that report removes it. An id no longer in the stream is a report that
    /// left it unsent (trimmed away, or reaped by a takeover).
    /// </summary>
    public const string PortReportEntry = "portReportEntry";

    /// <summary>
    /// How the delivery's newest Port report ended: a <c>portazure.port.reports</c> outcome (sent, already_ended, failed,
    /// trimmed), or <see cref="PortReportNotQueued"/>. Removed when a newer report is written.
    /// </summary>
    public const string PortReport = "portReport";

    /// <summary>The <see cref="PortReport"/> of a report Redis refused to queue (event 2218): Port gets no line for it.</summary>
    public const string PortReportNotQueued = "not_queued";

    /// <summary>When the report state last changed (Unix ms): a report written, or one ended.</summary>
    public const string PortReportAt = "portReportAt";

    /// <summary>Only kept while the delivery waits in the retry schedule or the dead letters.</summary>
    public const string Body = DeliveryEntry.Fields.Body;
}
